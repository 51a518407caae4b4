/**
 * Part 2 of the benchmark, on a full cluster with production timings: end to end against a
 * naive pipeline, publish-to-commit latency, and under a steady background load, worker kills,
 * scale-outs and leader kills.
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import { connectNats } from "../../shared/adapters/nats/connection.js";
import { parseConfig } from "../../shared/contract/config.js";
import { cliScript, openSinkInspector } from "../cli/cluster-file.js";
import { waitSettled } from "../cli/readiness.js";
import type { BenchRun } from "./bench-run.js";
import {
  type ClusterHandle,
  leaderKillTrials,
  type ScaleOutTrial,
  scaleOutTrials,
  workerKillTrials,
} from "./cluster-trials.js";
import { type EndToEndPair, naiveEndToEndRate, naiveSqlite, publishThenEndToEnd } from "./end-to-end.js";
import { stealText } from "./host-cpu.js";
import { type Latency, publishToCommitLatency } from "./latency-memory.js";
import type { Rate } from "./publish-rates.js";

/**
 * The cluster part: end to end into SQLite against the producer alone into an R3 stream of the
 * same layout on the same cluster (`EndToEndPair`) and against the naive pipeline, then latency,
 * failover and rebalance.
 */
export interface ClusterResult extends EndToEndPair {
  naive: Rate;
  latency: Latency;
  kills: number[];
  scale: ScaleOutTrial[];
  leader: number[];
}

export function measureCluster(run: BenchRun): Promise<ClusterResult> {
  const clusterCfg = parseConfig({});
  const e2eRecords = Math.max(10_000, Math.round(run.s.records / 2));
  return run.withCluster(
    "cluster",
    { workers: 3, coordinators: 2, config: clusterCfg, portBase: run.s.portBase + 10 },
    async (c) => {
      const nc = await connectNats({ servers: c.nats.map((n) => n.url), name: "sluice-bench" });
      const sink = openSinkInspector(c, nc);
      const h: ClusterHandle = { dir: c.dir, nc, cfg: clusterCfg, sink, pipeline: "demo" };
      try {
        await waitSettled(nc, clusterCfg, sink, 60_000);
        const endToEnd = await run.measuringSteal("end_to_end", async () => {
          // The naive pipeline runs at a few hundred records/s: fewer records measure it as well.
          const naive = await naiveEndToEndRate(
            nc,
            naiveSqlite(join(c.dir, "naive.db")),
            run.s.quick ? 2_000 : 20_000,
            "n1",
            3,
          );
          run.log(`naive pipeline: ${Math.round(naive.perSecond)}/s end to end`);
          const pair = await publishThenEndToEnd(c, nc, sink, e2eRecords, {
            publishPrefix: "sqlite",
            e2ePrefix: "e2e",
            into: "SQLite",
            rounds: run.s.rounds,
            log: run.log,
          });
          return { naive, ...pair };
        });
        const latencyRate = run.s.quick ? 2_000 : 5_000;
        const latency = await run.measuringSteal("latency", () =>
          publishToCommitLatency(
            nc,
            "demo",
            sink,
            latencyRate * (run.s.quick ? 10 : 30),
            latencyRate,
            join(c.dir, "latency-acks.jsonl"),
          ),
        );
        run.log(`latency at ${latencyRate}/s: p50 ${latency.p50Ms} ms, p99 ${latency.p99Ms} ms`);
        // Trials run under a steady background load from its own process: the run.s.trials read the
        // sink with synchronous queries, which would otherwise stall the publishing.
        const load = spawn(
          process.execPath,
          [
            cliScript,
            "load",
            "--dir",
            c.dir,
            "--pipeline",
            "demo",
            "--count",
            "1000000000",
            "--rate",
            "2000",
          ].concat(["--ack-log", "/dev/null", "--keys", "1024"]),
          { stdio: "ignore" },
        );
        try {
          const kills = await run.measuringSteal("worker_kill", () =>
            workerKillTrials(h, run.s.trials, run.log),
          );
          const scale = await run.measuringSteal("scale_out", () => scaleOutTrials(h, run.s.trials, run.log));
          const leader = await run.measuringSteal("leader_kill", () =>
            leaderKillTrials(h, run.s.trials, run.log),
          );
          run.log(
            `host CPU steal: worker kills ${stealText(run.steal.worker_kill)}, scale-outs ${stealText(run.steal.scale_out)}, leader kills ${stealText(run.steal.leader_kill)}`,
          );
          return { ...endToEnd, latency, kills, scale, leader };
        } finally {
          load.kill("SIGKILL");
        }
      } finally {
        await sink.close();
        await nc.close();
      }
    },
  );
}
