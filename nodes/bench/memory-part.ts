/** Part 3 of the benchmark: the memory of one worker owning 64 shards under full load. */
import { connectNats } from "../../shared/adapters/nats/connection.js";
import { parseConfig } from "../../shared/contract/config.js";
import { openSinkInspector, readClusterFile } from "../cli/cluster-file.js";
import { waitSettled } from "../cli/readiness.js";
import type { BenchRun } from "./bench-run.js";
import { type MemoryRun, membersLost, memoryUnderLoad } from "./latency-memory.js";

export type MemoryResult = MemoryRun & { lost: number };

export function measureMemory(run: BenchRun): Promise<MemoryResult> {
  const memCfg = parseConfig({ pipelines: [{ name: "demo", shards: 64 }] });
  return run.withCluster(
    "memory",
    { workers: 1, coordinators: 1, config: memCfg, portBase: run.s.portBase + 20 },
    async (c) => {
      const nc = await connectNats({ servers: c.nats.map((n) => n.url), name: "sluice-bench" });
      const sink = openSinkInspector(c, nc);
      try {
        await waitSettled(nc, memCfg, sink, 60_000);
        const pid = readClusterFile(c.dir).workers[0]!.pid;
        const coordinators = c.coordinators.map((x) => x.id);
        const lostBefore = membersLost(c.dir, coordinators);
        const m = await run.measuringSteal("memory", () =>
          memoryUnderLoad(nc, "demo", pid, run.s.memorySeconds, run.s.quick ? 2 : 10, "/dev/null"),
        );
        const lost = membersLost(c.dir, coordinators) - lostBefore;
        run.log(
          `worker RSS over ${Math.round(m.seconds)} s with 64 shards: start ${m.startMiB.toFixed(0)} MiB, end ${m.endMiB.toFixed(0)} MiB, max ${m.maxMiB.toFixed(0)} MiB, slope ${m.slopeMiBPerMin.toFixed(2)} MiB/min; ` +
            `the coordinator lost the worker ${lost} time(s)`,
        );
        return { ...m, lost };
      } finally {
        await sink.close();
        await nc.close();
      }
    },
  );
}
