/**
 * Part 5 of the benchmark: end to end into PostgreSQL and into a JetStream output stream, each on
 * a full cluster of its own (3 workers, 2 coordinators), against the producer alone into an R3
 * stream of the same layout on that cluster, and, for PostgreSQL, against a naive pipeline (one
 * INSERT per record, each acked once it returned) into the same database, and the cluster's
 * ceiling: the same records received and acked only, by three reader processes (`ack-only.ts`).
 */
import { connectNats } from "../../shared/adapters/nats/connection.js";
import { parseConfig } from "../../shared/contract/config.js";
import { openSinkInspector, readClusterConfig } from "../cli/cluster-file.js";
import { waitSettled } from "../cli/readiness.js";
import { type AckOnlyPair, publishThenAckOnly } from "./ack-only.js";
import type { BenchRun } from "./bench-run.js";
import { type EndToEndPair, naiveEndToEndRate, naivePostgres, publishThenEndToEnd } from "./end-to-end.js";
import type { Rate } from "./publish-rates.js";

export interface SinkE2E extends EndToEndPair {
  /** PostgreSQL only: the naive pipeline into the same database. */
  naive?: Rate;
  /** PostgreSQL only: the cluster's ack-only ceiling against the producer alone. */
  ackOnly?: AckOnlyPair;
}

export interface SinksResult {
  postgres: SinkE2E;
  jetstream: SinkE2E;
}

async function measureSink(
  run: BenchRun,
  sink: "postgres" | "jetstream",
  portBase: number,
): Promise<SinkE2E> {
  const records = Math.max(10_000, Math.round(run.s.records / 2));
  return run.withCluster(
    `e2e-${sink}`,
    { workers: 3, coordinators: 2, config: parseConfig({}), portBase, sink },
    async (c) => {
      const nc = await connectNats({ servers: c.nats.map((n) => n.url), name: "sluice-bench" });
      const inspector = openSinkInspector(c, nc);
      try {
        const cfg = readClusterConfig(c);
        await waitSettled(nc, cfg, inspector, 60_000);
        const pair = await publishThenEndToEnd(c, nc, inspector, records, {
          publishPrefix: sink,
          e2ePrefix: `e2e_${sink}`,
          into: sink,
          rounds: run.s.rounds,
          log: run.log,
        });
        let naive: Rate | undefined;
        if (cfg.sink.type === "postgres") {
          naive = await naiveEndToEndRate(
            nc,
            await naivePostgres(cfg.sink.url),
            run.s.quick ? 2_000 : 20_000,
            "npg",
            3,
          );
          run.log(`naive pipeline into PostgreSQL: ${Math.round(naive.perSecond)}/s end to end`);
        }
        let ackOnly: AckOnlyPair | undefined;
        if (cfg.sink.type === "postgres")
          ackOnly = await publishThenAckOnly(c, nc, records, {
            prefix: sink,
            rounds: run.s.rounds,
            log: run.log,
          });
        return { ...pair, ...(naive ? { naive } : {}), ...(ackOnly ? { ackOnly } : {}) };
      } finally {
        await inspector.close();
        await nc.close();
      }
    },
  );
}

export function measureSinks(run: BenchRun): Promise<SinksResult> {
  return run.measuringSteal("sinks", async () => ({
    postgres: await measureSink(run, "postgres", run.s.portBase + 50),
    jetstream: await measureSink(run, "jetstream", run.s.portBase + 60),
  }));
}
