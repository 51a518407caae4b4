/**
 * Publish-to-commit latency at a steady rate, and a worker's resident memory under full load.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { build as buildHistogram } from "hdr-histogram-js";
import type { SinkInspector } from "../../shared/contract/ports.js";
import { runLoad } from "../cli/load.js";
import { waitUntil } from "../cli/wait.js";

export interface Latency {
  rate: number;
  records: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

/**
 * Publishes `count` records at `rate`/s and reads, for each, the time from its creation by
 * the producer (`at` in the payload) to its commit (`committedAt`), both this host's clock.
 */
export async function publishToCommitLatency(
  nc: NatsConnection,
  pipeline: string,
  sink: SinkInspector,
  count: number,
  rate: number,
  ackLog: string,
): Promise<Latency> {
  const startedAt = Date.now();
  const summary = await runLoad(nc, { pipeline, count, rate, ackLog, keys: 1024 });
  const ids = `${summary.runId}-`;
  // Counted cheaply until every record landed, then read once with values.
  await waitUntil(
    "every latency record to commit",
    120_000,
    async () => {
      const n = (await sink.rows(pipeline, { sinceMs: startedAt })).filter((r) =>
        r.recordId.startsWith(ids),
      ).length;
      return n >= summary.acked ? true : undefined;
    },
    200,
  );
  const rows = (await sink.rows(pipeline, { sinceMs: startedAt, values: true }))
    .filter((r) => r.recordId.startsWith(ids))
    .map((r) => ({ ms: r.committedAt - Number(r.value?.at) }));
  const h = buildHistogram({
    lowestDiscernibleValue: 1,
    highestTrackableValue: 3_600_000,
    numberOfSignificantValueDigits: 3,
  });
  for (const r of rows) h.recordValue(Math.max(1, r.ms));
  return {
    rate,
    records: rows.length,
    p50Ms: h.getValueAtPercentile(50),
    p99Ms: h.getValueAtPercentile(99),
    maxMs: h.maxValue,
  };
}

/** Resident set size of a process, MiB (Linux /proc). */
export function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : Number.NaN;
}

export interface MemoryRun {
  seconds: number;
  records: number;
  samples: Array<{ s: number; rssMiB: number }>;
  startMiB: number;
  endMiB: number;
  maxMiB: number;
  /** Least-squares slope of RSS over the second half of the run, MiB per minute. */
  slopeMiBPerMin: number;
  /** Median RSS of the first and of the last third of the samples, MiB (GC makes single samples noisy). */
  firstThirdMedianMiB: number;
  lastThirdMedianMiB: number;
}

const medianOf = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? Number.NaN : s[Math.floor(s.length / 2)]!;
};

/** Least-squares slope of y over x. */
export function slope(points: ReadonlyArray<[number, number]>): number {
  const n = points.length;
  if (n < 2) return 0;
  const mx = points.reduce((a, [x]) => a + x, 0) / n;
  const my = points.reduce((a, [, y]) => a + y, 0) / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

/**
 * Loads the pipeline as fast as the producer goes for `seconds` while sampling the worker's
 * RSS every `everyS` seconds.
 */
export async function memoryUnderLoad(
  nc: NatsConnection,
  pipeline: string,
  workerPid: number,
  seconds: number,
  everyS: number,
  ackLog: string,
): Promise<MemoryRun> {
  const abort = new AbortController();
  const samples: Array<{ s: number; rssMiB: number }> = [];
  const t0 = Date.now();
  const sampler = setInterval(() => {
    samples.push({ s: (Date.now() - t0) / 1000, rssMiB: rssMiB(workerPid) });
  }, everyS * 1000);
  const stop = setTimeout(() => abort.abort(), seconds * 1000);
  // Unpaced: the producer outruns the worker, so the worker always has a full backlog to read.
  const summary = await runLoad(nc, {
    pipeline,
    count: Number.MAX_SAFE_INTEGER,
    rate: 0,
    ackLog,
    keys: 4096,
    signal: abort.signal,
  });
  clearTimeout(stop);
  clearInterval(sampler);
  const rss = samples.map((x) => x.rssMiB);
  const secondHalf = samples
    .filter((x) => x.s >= seconds / 2)
    .map((x): [number, number] => [x.s / 60, x.rssMiB]);
  return {
    seconds: (Date.now() - t0) / 1000,
    records: summary.acked,
    samples,
    startMiB: rss[0] ?? Number.NaN,
    endMiB: rss.at(-1) ?? Number.NaN,
    maxMiB: Math.max(...rss),
    slopeMiBPerMin: slope(secondHalf),
    firstThirdMedianMiB: medianOf(rss.slice(0, Math.ceil(rss.length / 3))),
    lastThirdMedianMiB: medianOf(rss.slice(Math.floor((rss.length * 2) / 3))),
  };
}

/**
 * How often the coordinators have logged a worker lost (`member lost`) in a local cluster's
 * logs so far. Under full load a healthy worker must never be: each loss moves and fences all
 * of its shards.
 */
export function membersLost(dir: string, coordinators: readonly string[]): number {
  let n = 0;
  for (const id of coordinators) {
    let text = "";
    try {
      text = readFileSync(join(dir, "logs", `${id}.log`), "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n")) if (line.includes('"msg":"member lost"')) n++;
  }
  return n;
}
