/**
 * Part 3 of the benchmark: the memory of one worker owning 64 shards under full load, every
 * record through the transform stages (`transformStageConfig`): what a worker caches (the
 * reference table) and keeps per record must stay bounded.
 */
import { connectNats } from "../../shared/adapters/nats/connection.js";
import { parseConfig } from "../../shared/contract/config.js";
import { openSinkInspector, readClusterFile } from "../cli/cluster-file.js";
import { waitSettled } from "../cli/readiness.js";
import type { BenchRun } from "./bench-run.js";
import { loadBenchTable, transformStageConfig } from "./bench-stages.js";
import { type MemoryRun, membersLost, memoryUnderLoad } from "./latency-memory.js";

/** `committed`: rows in the sink at the end, a check that the worker did work through its stages. */
export type MemoryResult = MemoryRun & { lost: number; committed: number };

export function measureMemory(run: BenchRun): Promise<MemoryResult> {
  // A one-minute dedupe window, so the run also expires marks as it goes.
  const memCfg = parseConfig({
    pipelines: [{ name: "demo", shards: 64, stages: transformStageConfig("1m") }],
  });
  return run.withCluster(
    "memory",
    { workers: 1, coordinators: 1, config: memCfg, portBase: run.s.portBase + 20 },
    async (c) => {
      const nc = await connectNats({ servers: c.nats.map((n) => n.url), name: "sluice-bench" });
      const sink = openSinkInspector(c, nc);
      try {
        // The load's 4,096 keys, all in the table (workers hold records until the table exists).
        await loadBenchTable(nc, memCfg.pipelines[0]!.replicas, 4096);
        await waitSettled(nc, memCfg, sink, 60_000);
        const pid = readClusterFile(c.dir).workers[0]!.pid;
        const coordinators = c.coordinators.map((x) => x.id);
        const lostBefore = membersLost(c.dir, coordinators);
        const m = await run.measuringSteal("memory", () =>
          memoryUnderLoad(nc, "demo", pid, run.s.memorySeconds, run.s.quick ? 2 : 10, "/dev/null"),
        );
        const lost = membersLost(c.dir, coordinators) - lostBefore;
        const committed = await sink.rowCount("demo");
        // One shard's last rows, to show one through the stages (all rows would be millions).
        const recent = await sink.rows("demo", { shard: 0, sinceMs: Date.now() - 5_000, values: true });
        const sample = recent.at(-1);
        run.log(
          `worker RSS over ${Math.round(m.seconds)} s with 64 shards and the transform stages: start ${m.startMiB.toFixed(0)} MiB, end ${m.endMiB.toFixed(0)} MiB, max ${m.maxMiB.toFixed(0)} MiB, slope ${m.slopeMiBPerMin.toFixed(2)} MiB/min; ` +
            `the coordinator lost the worker ${lost} time(s); ${committed} of ${m.records} records committed, e.g. ${JSON.stringify(sample?.value ?? null)}`,
        );
        return { ...m, lost, committed };
      } finally {
        await sink.close();
        await nc.close();
      }
    },
  );
}
