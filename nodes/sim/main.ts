/**
 * `npm run sim -- --seeds N [--start S] [--sink memory|output-stream] [--merge] [--group-commit]`
 * runs N seeded simulations of the whole ownership protocol across worker threads, committing to
 * a transactional sink (`memory`, as SQLite and PostgreSQL) or through the JetStream output
 * sink's design (`output-stream`); `--merge` runs two branches into a merge, and
 * `--group-commit` shares each worker's commits among requests as PostgreSQL's group commit
 * shares transactions (memory sink).
 * `npm run sim -- --seed X` replays one with its trace.
 * Exit 1 if any seed breaks an invariant; each failure prints the command that replays it.
 */
import { availableParallelism } from "node:os";
import { isMainThread, parentPort, Worker, workerData } from "node:worker_threads";
import { Command, InvalidArgumentError } from "commander";
import type { SeedResult } from "../../shared/testkit/sim/sim-options.js";
import { runSeed } from "../../shared/testkit/sim/sim-runs.js";

type SimSink = "memory" | "output-stream";

interface Job {
  sink: SimSink;
  merge: boolean;
  groupCommit: boolean;
  start: number;
  count: number;
  stride: number;
  offset: number;
}

type Report = Pick<
  SeedResult,
  "seed" | "ok" | "violations" | "faults" | "records" | "steps" | "fencedRejects" | "sharedCommits"
>;

async function runJob(job: Job, onResult: (r: Report) => void): Promise<void> {
  for (let i = job.offset; i < job.count; i += job.stride) {
    const r = await runSeed(job.start + i, {
      sink: job.sink,
      merge: job.merge,
      groupCommit: job.groupCommit,
    });
    onResult({
      seed: r.seed,
      ok: r.ok,
      violations: r.violations.slice(0, 5),
      faults: r.faults,
      records: r.records,
      steps: r.steps,
      fencedRejects: r.fencedRejects,
      sharedCommits: r.sharedCommits,
    });
  }
}

if (!isMainThread) {
  await runJob(workerData as Job, (r) => parentPort!.postMessage(r));
} else {
  const int = (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n)) throw new InvalidArgumentError("must be an integer");
    return n;
  };
  const o = new Command("sluice-sim")
    .description("deterministic simulation of the sluice ownership protocol")
    .option("--seeds <n>", "how many seeds to run", int, 1000)
    .option("--start <s>", "first seed", int, 1)
    .option("--seed <x>", "replay one seed and print its trace", int)
    .option("--threads <t>", "worker threads", int, Math.min(2, availableParallelism()))
    .option(
      "--sink <s>",
      "memory (a transactional sink) or output-stream (the JetStream output sink)",
      "memory",
    )
    .option("--merge", "two branches into a merge, reconciled at the end (memory sink)", false)
    .option(
      "--group-commit",
      "workers' commits share requests, as PostgreSQL's group commit (memory sink)",
      false,
    )
    .parse(process.argv)
    .opts<{
      seeds: number;
      start: number;
      seed?: number;
      threads: number;
      sink: string;
      merge: boolean;
      groupCommit: boolean;
    }>();
  if (o.sink !== "memory" && o.sink !== "output-stream")
    throw new InvalidArgumentError("--sink must be memory or output-stream");
  const sink: SimSink = o.sink;
  if (o.merge && sink !== "memory") throw new InvalidArgumentError("--merge needs --sink memory");
  const merge: boolean = o.merge;
  if (o.groupCommit && sink !== "memory")
    throw new InvalidArgumentError("--group-commit needs --sink memory");
  const groupCommit: boolean = o.groupCommit;
  const flags = `${merge ? " --merge" : ""}${groupCommit ? " --group-commit" : ""}`;

  if (o.seed !== undefined) {
    const r = await runSeed(o.seed, { trace: true, sink, merge, groupCommit });
    console.log(r.trace.join("\n"));
    console.log(`\nseed ${r.seed}: ${r.ok ? "OK" : "VIOLATED"}; faults: ${r.faults.join("; ") || "none"}`);
    console.log(
      `${r.records} records, ${r.steps} steps, ${r.virtualMs} virtual ms, ${r.fencedRejects} commits fenced`,
    );
    for (const v of r.violations) console.log(`  ${v.at} ms [${v.invariant}] ${v.detail}`);
    process.exitCode = r.ok ? 0 : 1;
  } else {
    const t0 = Date.now();
    const failures: Report[] = [];
    let done = 0;
    let records = 0;
    let steps = 0;
    let fenced = 0;
    let shared = 0;
    let faults = 0;
    const onResult = (r: Report): void => {
      done++;
      records += r.records;
      steps += r.steps;
      fenced += r.fencedRejects;
      shared += r.sharedCommits;
      faults += r.faults.length;
      if (!r.ok) {
        failures.push(r);
        console.log(`seed ${r.seed} FAILED: [${r.violations[0]?.invariant}] ${r.violations[0]?.detail}`);
        console.log(`  faults: ${r.faults.join("; ")}`);
        console.log(`  replay: npm run sim -- --seed ${r.seed} --sink ${sink}${flags}`);
      }
      if (done % 1000 === 0) console.log(`${done}/${o.seeds} seeds, ${failures.length} failed`);
    };
    const threads = Math.max(1, Math.min(o.threads, o.seeds));
    await Promise.all(
      Array.from({ length: threads }, (_, offset) => {
        const job: Job = {
          sink,
          merge,
          groupCommit,
          start: o.start,
          count: o.seeds,
          stride: threads,
          offset,
        };
        return new Promise<void>((resolve, reject) => {
          const w = new Worker(new URL(import.meta.url), { workerData: job });
          w.on("message", onResult);
          w.on("error", reject);
          w.on("exit", (code) => (code === 0 ? resolve() : reject(new Error(`sim thread exited ${code}`))));
        });
      }),
    );
    const secs = (Date.now() - t0) / 1000;
    console.log(
      `simulated ${done} seeds (${o.start}..${o.start + o.seeds - 1}, sink ${sink}${merge ? ", two branches into a merge" : ""}${groupCommit ? ", group commit" : ""}) in ${secs.toFixed(1)} s: ${(done / secs).toFixed(0)} seeds/s on ${threads} threads; ${faults} faults, ${records} records, ${steps} steps, ${fenced} zombie commits fenced${groupCommit ? `, ${shared} commits shared a request` : ""}`,
    );
    console.log(`sim: ${done - failures.length} passed, ${failures.length} failed`);
    process.exitCode = failures.length === 0 ? 0 : 1;
  }
}
