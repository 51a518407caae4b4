#!/usr/bin/env node
/**
 * `npm run bench`: throughput, latency, failover, rebalance and memory on local clusters,
 * each figure next to a baseline measured in the same run. Prints one table and writes the
 * same as JSON (`report.ts` holds its shape). `--quick` is the short version CI runs.
 */
import { writeFileSync } from "node:fs";
import { resolve } from "node:path";
import { Command } from "commander";
import { intOption } from "../cli/int-option.js";
import { checkedNatsServer } from "../cli/nats-binary.js";
import { BenchRun } from "./bench-run.js";
import { measureCluster } from "./cluster-part.js";
import { measureDurability } from "./durability-part.js";
import { measureMemory } from "./memory-part.js";
import { measureMerge } from "./merge-part.js";
import { buildReport, reportTable } from "./report.js";
import { measureSecurity } from "./security-part.js";
import { measureSinks } from "./sinks-part.js";
import { measureThroughput } from "./throughput-part.js";

const int = (name: string) => intOption(name, 1);

const o = new Command("sluice-bench")
  .description("benchmarks of sluice against same-run baselines")
  .option("--quick", "short version for CI: fewer records, 3 trials, 30 s memory run")
  .option("--dir <dir>", "working directory (clusters are started and removed under it)", ".sluice-bench")
  .option("--json <file>", "where to write the JSON report", "bench-results.json")
  .option("--port-base <port>", "first NATS client port", int("--port-base"), 15222)
  .option("--records <n>", "records per throughput measurement", int("--records"))
  .option("--trials <n>", "trials per failover and rebalance figure", int("--trials"))
  .option("--memory-seconds <s>", "length of the memory run", int("--memory-seconds"))
  .option("--keep", "keep each stopped cluster's directory (logs, sink.db) for inspection")
  .parse(process.argv)
  .opts<{
    quick?: boolean;
    keep?: boolean;
    dir: string;
    json: string;
    portBase: number;
    records?: number;
    trials?: number;
    memorySeconds?: number;
  }>();

const quick = o.quick === true;
const records = o.records ?? (quick ? 20_000 : 200_000);
const run = new BenchRun({
  quick,
  dir: resolve(o.dir),
  portBase: o.portBase,
  records,
  rounds: quick ? 2 : 3,
  trials: o.trials ?? (quick ? 3 : 10),
  memorySeconds: o.memorySeconds ?? (quick ? 30 : 600),
  // The full run's publish rounds leave 1.2 M records in the stream.
  minReadRecords: Math.min(320_000, records * 16),
  keep: o.keep === true,
});

const startedAt = new Date();
const throughput = await measureThroughput(run);
const cluster = await measureCluster(run);
const memory = await measureMemory(run);
const durability = await measureDurability(run);
const sinks = await measureSinks(run);
const merge = await measureMerge(run);
const security = await measureSecurity(run);
const results = {
  settings: run.s,
  startedAt,
  natsServer: `v${checkedNatsServer().version}`,
  throughput,
  cluster,
  memory,
  durability,
  sinks,
  merge,
  security,
  steal: run.steal,
};
const report = buildReport(results);
console.log(`\n${reportTable(report, results)}`);
writeFileSync(o.json, `${JSON.stringify(report, null, 2)}\n`);
console.log(`\nJSON report: ${resolve(o.json)}`);
