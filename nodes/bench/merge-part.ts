/**
 * Part 6 of the benchmark: a merge of two branches against the same records appended only, on
 * the SQLite sink (`ratios.merge_vs_append`). The same commits, 500 rows each from two 8-shard
 * branches over 1,000 customers, go into a fresh sink file once with every record also applied
 * to the merge's table by the `latest` policy and once without; the two variants take turns at
 * going first, round by round, in this one process. The sink's transaction is where a merge
 * costs: the stages before it only tag each record.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SqliteSink } from "../../shared/adapters/sink/sqlite-sink.js";
import type { SinkRow } from "../../shared/contract/ports.js";
import { type BenchRun, best } from "./bench-run.js";
import { type Rate, rate } from "./publish-rates.js";

export interface MergeResult {
  append: Rate;
  merge: Rate;
}

const BRANCHES = [
  { name: "crm", priority: 2 },
  { name: "billing", priority: 1 },
];
const SHARDS = 8;
const BATCH = 500;

/** Each branch's commits: per shard, batches of `BATCH` rows in source order. */
function commits(
  records: number,
  merge: boolean,
): Array<{ pipeline: string; shard: number; rows: SinkRow[] }> {
  const out: Array<{ pipeline: string; shard: number; rows: SinkRow[] }> = [];
  const perShard = Math.ceil(records / (BRANCHES.length * SHARDS));
  for (const b of BRANCHES) {
    for (let shard = 0; shard < SHARDS; shard++) {
      for (let from = 0; from < perShard; from += BATCH) {
        const rows: SinkRow[] = [];
        for (let i = from; i < Math.min(perShard, from + BATCH); i++) {
          const n = i * SHARDS + shard;
          const key = `c${n % 1_000}`;
          const eventTime = 1_700_000_000_000 + n * 10;
          rows.push({
            recordId: `${b.name}-${n}`,
            key,
            sourceSeq: i + 1,
            value: { customer_id: key, updated_at: eventTime, body: "x".repeat(160) },
            ...(merge
              ? { merge: { into: "customers", policy: "latest", priority: b.priority, eventTime } }
              : {}),
          });
        }
        out.push({ pipeline: b.name, shard, rows });
      }
    }
  }
  return out;
}

async function commitRate(records: number, merge: boolean): Promise<Rate> {
  const dir = mkdtempSync(join(tmpdir(), "sluice-bench-merge-"));
  const sink = new SqliteSink(join(dir, "sink.db"), { pipelines: BRANCHES.map((b) => b.name) });
  try {
    const plan = commits(records, merge);
    for (const b of BRANCHES)
      for (let shard = 0; shard < SHARDS; shard++) await sink.fence({ pipeline: b.name, shard }, 1);
    // Branches interleaved batch by batch, as their shards commit side by side.
    const order = plan.map((_, i) => i).sort((a, b) => (a % SHARDS) - (b % SHARDS) || a - b);
    let n = 0;
    const t0 = performance.now();
    for (const i of order) {
      const c = plan[i]!;
      await sink.commit(
        { pipeline: c.pipeline, shard: c.shard },
        1,
        "bench",
        c.rows,
        c.rows.at(-1)!.sourceSeq,
      );
      n += c.rows.length;
    }
    return rate(n, performance.now() - t0);
  } finally {
    await sink.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

export async function measureMerge(run: BenchRun): Promise<MergeResult> {
  // At least 200,000 (under a second a variant): shorter runs measure the JIT's warm-up.
  const records = Math.max(200_000, run.s.records);
  const append: Rate[] = [];
  const merge: Rate[] = [];
  for (let r = 0; r < run.s.rounds; r++) {
    const variants: Array<[Rate[], boolean]> = [
      [append, false],
      [merge, true],
    ];
    for (let i = 0; i < variants.length; i++) {
      const [into, withMerge] = variants[(r + i) % variants.length]!;
      into.push(await commitRate(records, withMerge));
    }
  }
  const result = { append: best(append), merge: best(merge) };
  run.log(
    `SQLite sink, two branches of ${records / 2} records: appended only ${Math.round(result.append.perSecond)}/s, ` +
      `also merged ${Math.round(result.merge.perSecond)}/s`,
  );
  return result;
}
