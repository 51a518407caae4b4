/**
 * Part 1 of the benchmark: the producer against `js.publish()`, and the worker path against an
 * ordered consumer, on an otherwise idle cluster (no workers), over the same streams.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import {
  connectForPublishing,
  connectNats,
  connectNearPipelines,
} from "../../shared/adapters/nats/connection.js";
import { parseConfig } from "../../shared/contract/config.js";
import type { Stage } from "../../shared/pipeline/stage.js";
import { type BenchRun, best } from "./bench-run.js";
import { benchStages, transformStages } from "./bench-stages.js";
import { jsPublishRate, makeRecords, producerRate, type Rate } from "./publish-rates.js";
import { consumersReadRate, orderedReadRate, pipelineReadRate, pipelineRecords } from "./read-rates.js";
import { measureTracingOverhead, type TracingOverheadResult } from "./tracing-overhead.js";

const throughputCfg = parseConfig({
  pipelines: [
    { name: "bench_r3", shards: 16, replicas: 3 },
    { name: "bench_r1", shards: 16, replicas: 1 },
    { name: "bench_one", shards: 1, replicas: 3 },
    { name: "bench_ps", shards: 16, replicas: 3, streams: "per-shard" },
  ],
});
const pipelineCfg = (name: string) => throughputCfg.pipelines.find((p) => p.name === name)!;

export interface ThroughputResult {
  publish: Record<string, { js: Rate; producer: Rate }>;
  tracing: TracingOverheadResult;
  ordered: Rate;
  worker: Rate;
  consumers: Rate;
  /** The worker path with schema validation and three enforced rules (`benchStages`). */
  schema: Rate;
  /** The worker path with five normalise steps, an enrichment and dedupe (`transformStages`). */
  transform: Rate;
  one: { ordered: Rate; worker: Rate };
  perShard: { ordered: Rate; worker: Rate };
}

export function measureThroughput(run: BenchRun): Promise<ThroughputResult> {
  return run.measuringSteal("throughput", () =>
    run.withCluster(
      "throughput",
      { workers: 0, coordinators: 0, config: throughputCfg, portBase: run.s.portBase },
      async (c) => {
        const nc = await connectNats({ servers: c.nats.map((n) => n.url), name: "sluice-bench" });
        try {
          const publish: Record<string, { js: Rate; producer: Rate }> = {};
          // Both sides publish over one connection to the stream leader's server, as `sluice load`
          // does: through another server every record would also cross a route, and which server a
          // random connection picks would decide a fifth of the producer's rate.
          const publishers = new Map<string, NatsConnection>();
          let tracing: TracingOverheadResult;
          try {
            for (const p of ["bench_r3", "bench_r1"]) {
              const pnc = await connectForPublishing({
                servers: c.nats.map((n) => n.url),
                name: "sluice-bench-publish",
                pipeline: pipelineCfg(p),
              });
              publishers.set(p, pnc);
              const js: Rate[] = [];
              const pr: Rate[] = [];
              // Alternating run.s.rounds, best of each side, so neither gets the warm cache alone.
              for (let r = 0; r < run.s.rounds; r++) {
                js.push(await jsPublishRate(pnc, p, makeRecords(`${p}-js${r}`, run.s.records)));
                pr.push(await producerRate(pnc, p, makeRecords(`${p}-pr${r}`, run.s.records)));
              }
              publish[p] = { js: best(js), producer: best(pr) };
              run.log(
                `${p} (connected to ${pnc.info?.server_name ?? "?"}): js.publish ${Math.round(best(js).perSecond)}/s, ` +
                  `producer ${Math.round(best(pr).perSecond)}/s`,
              );
            }
            // What tracing costs the producer: no provider, 1 % sampled, always on (one run).
            tracing = await measureTracingOverhead(publishers.get("bench_r1")!, {
              pipeline: "bench_r1",
              count: run.s.records,
              prefix: "trace",
            });
          } finally {
            for (const pnc of publishers.values()) await pnc.close();
          }
          run.log(
            `tracing: off ${Math.round(tracing.off.perSecond)}/s, 1 % sampled ${Math.round(tracing.sampled.perSecond)}/s, ` +
              `always on ${Math.round(tracing.alwaysOn.perSecond)}/s`,
          );
          // The same reads over a one-shard stream: one consumer instead of sixteen, which separates
          // the worker's own cost from the server's cost of serving per-shard consumers; and over
          // one stream per shard, where no consumer filters.
          await producerRate(nc, "bench_one", makeRecords("one", run.s.records * 2));
          // A short read mostly measures how long sixteen consumers take to start (`startSpreadS`),
          // not how fast they read: the shared stream is topped up to `run.s.minReadRecords` first.
          const short = run.s.minReadRecords - (await pipelineRecords(nc, pipelineCfg("bench_r3")));
          if (short > 0) await producerRate(nc, "bench_r3", makeRecords("top", short));
          const sharedRecords = await pipelineRecords(nc, pipelineCfg("bench_r3"));
          await producerRate(nc, "bench_ps", makeRecords("ps", sharedRecords));
          const reads: Record<
            string,
            { ordered: Rate; worker: Rate; consumers?: Rate; schema?: Rate; transform?: Rate }
          > = {};
          const stages = await benchStages(nc, pipelineCfg("bench_r3"));
          const transforms = await transformStages(nc, pipelineCfg("bench_r3"));
          for (const name of ["bench_r3", "bench_ps", "bench_one"]) {
            const p = pipelineCfg(name);
            const inStreams = await pipelineRecords(nc, p);
            // Both sides read over the connection a worker reads this pipeline through (near its
            // stream's leader, `connectNearPipelines`), not whichever server a random pick gives.
            const rnc = await connectNearPipelines({
              servers: c.nats.map((n) => n.url),
              name: "sluice-bench-read",
              pipelines: [p],
            });
            const via = rnc.info?.server_name ?? "?";
            const ordered: Rate[] = [];
            const worker: Rate[] = [];
            // On the main layout also the worker's consumers alone (no decoding, no sink): how much
            // of the gap to the ordered read is JetStream's and how much the worker's.
            const consumers: Rate[] = [];
            // And the worker path through the schema stage and three rules, alternated with the
            // plain one: `ratios.schema_vs_plain`.
            const schema: Rate[] = [];
            // And through the transform stages: `ratios.stages_vs_plain`.
            const transform: Rate[] = [];
            try {
              // The worker path's variants take turns at going first, round by round: a read right
              // after another finds a warmer cluster, which would favour whichever always came later.
              const paths: Array<[Rate[], readonly Stage[]]> =
                name === "bench_r3"
                  ? [
                      [worker, []],
                      [schema, stages],
                      [transform, transforms.stages],
                    ]
                  : [[worker, []]];
              for (let r = 0; r < run.s.rounds; r++) {
                ordered.push(await orderedReadRate(rnc, p));
                for (let i = 0; i < paths.length; i++) {
                  const [into, withStages] = paths[(r + i) % paths.length]!;
                  into.push(await pipelineReadRate(rnc, p, inStreams, throughputCfg.worker, withStages));
                }
                if (name === "bench_r3")
                  consumers.push(await consumersReadRate(rnc, p, inStreams, throughputCfg.worker));
              }
            } finally {
              await rnc.close();
            }
            reads[name] = {
              ordered: best(ordered),
              worker: best(worker),
              ...(consumers.length > 0 ? { consumers: best(consumers) } : {}),
              ...(schema.length > 0 ? { schema: best(schema) } : {}),
              ...(transform.length > 0 ? { transform: best(transform) } : {}),
            };
            run.log(
              `read ${inStreams} records, ${p.shards} shard(s), ${p.streams} stream(s), via ${via}: ordered consumer ${Math.round(best(ordered).perSecond)}/s, ` +
                `worker path into a discarding sink ${Math.round(best(worker).perSecond)}/s ` +
                `(restarts after missed consumer heartbeats: ${worker.map((w) => w.restarts ?? 0).join(", ")}; ` +
                `last shard's first delivery after the first's: ${worker.map((w) => `${(w.startSpreadS ?? 0).toFixed(2)} s`).join(", ")})` +
                (consumers.length > 0
                  ? `; its consumers alone ${Math.round(best(consumers).perSecond)}/s`
                  : "") +
                (schema.length > 0
                  ? `; with schema and three rules ${Math.round(best(schema).perSecond)}/s`
                  : "") +
                (transform.length > 0
                  ? `; with five normalise steps, an enrichment and dedupe ${Math.round(best(transform).perSecond)}/s`
                  : ""),
            );
          }
          await transforms.close();
          const main = reads.bench_r3!;
          return {
            publish,
            tracing,
            ordered: main.ordered,
            worker: main.worker,
            consumers: main.consumers!,
            schema: main.schema!,
            transform: main.transform!,
            one: reads.bench_one!,
            perShard: reads.bench_ps!,
          };
        } finally {
          await nc.close();
        }
      },
    ),
  );
}
