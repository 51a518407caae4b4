/**
 * Part 7 of the benchmark: what the secured local cluster costs (README "Security"): TLS on
 * client and route connections, a user per role and JetStream's store encrypted with AES-GCM,
 * against the same cluster started with `--insecure`. Per variant, one cluster: the producer
 * alone into the `demo` pipeline (no worker yet), then three workers drain that backlog, then
 * end to end into SQLite. The variants alternate, insecure first, in the same run.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { parseConfig } from "../../shared/contract/config.js";
import { connectCluster, openSinkInspector } from "../cli/cluster-file.js";
import { addWorker } from "../cli/local-cluster.js";
import { waitSettled } from "../cli/readiness.js";
import { countCommitted } from "../cli/verify.js";
import { waitUntil } from "../cli/wait.js";
import { type BenchRun, median } from "./bench-run.js";
import { sluiceEndToEndRate } from "./end-to-end.js";
import { makeRecords, producerRate } from "./publish-rates.js";

export interface SecurityResult {
  /** Records/s per round, by variant. */
  producer: { secured: number[]; insecure: number[] };
  e2e: { secured: number[]; insecure: number[] };
}

async function measureVariant(
  run: BenchRun,
  secured: boolean,
  round: number,
  records: number,
): Promise<{ producer: number; e2e: number }> {
  const config = parseConfig({});
  const name = `security-${secured ? "secured" : "insecure"}-${round}`;
  return run.withCluster(
    name,
    { workers: 0, coordinators: 1, config, portBase: run.s.portBase + 70, insecure: !secured },
    async (c) => {
      const pipeline = config.pipelines[0]!;
      // Each side as its role: the producer's user publishes, the reader's reads the sink.
      // Both variants connect alike (not to the stream leader: the producer's user may not ask).
      const pub: NatsConnection = await connectCluster(c, "producer", "sluice-bench-security");
      const nc = await connectCluster(c, "reader", "sluice-bench-security-reader");
      const sink = openSinkInspector(c, nc);
      try {
        const producer = await producerRate(pub, pipeline.name, makeRecords(`sec${round}`, records));
        for (let i = 0; i < 3; i++) addWorker(c.dir);
        await waitUntil(
          "the workers to drain the producer's records",
          120_000,
          async () => ((await countCommitted(sink, pipeline.name)) >= records ? true : undefined),
          50,
        );
        await waitSettled(nc, config, sink, 60_000);
        const e2e = await sluiceEndToEndRate(pub, pipeline.name, sink, records, `sec-e2e${round}`);
        run.log(
          `${secured ? "secured" : "insecure"} cluster: producer ${Math.round(producer.perSecond)}/s, end to end ${Math.round(e2e.perSecond)}/s`,
        );
        return { producer: producer.perSecond, e2e: e2e.perSecond };
      } finally {
        await sink.close();
        await nc.close();
        await pub.close();
      }
    },
  );
}

export function measureSecurity(run: BenchRun): Promise<SecurityResult> {
  return run.measuringSteal("security", async () => {
    const records = Math.max(20_000, Math.round(run.s.records / 2));
    const r: SecurityResult = { producer: { secured: [], insecure: [] }, e2e: { secured: [], insecure: [] } };
    for (let round = 0; round < run.s.rounds - 1 || round === 0; round++) {
      for (const secured of [false, true]) {
        const m = await measureVariant(run, secured, round, records);
        r.producer[secured ? "secured" : "insecure"].push(m.producer);
        r.e2e[secured ? "secured" : "insecure"].push(m.e2e);
      }
    }
    return r;
  });
}

/** Secured against insecure: the medians' ratio. */
export const securedRatio = (x: { secured: number[]; insecure: number[] }): number =>
  median(x.secured) / median(x.insecure);
