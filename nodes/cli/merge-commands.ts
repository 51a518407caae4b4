/**
 * `sluice late list|reconcile` and `sluice merge status`: a cluster's late records, their
 * reconciliation into the merges, and how far each merge has converged (README "Merges").
 * `--dir D` finds the cluster and its config through `D/cluster.json`.
 */
import type { Command } from "commander";
import { postgresPool } from "../../shared/adapters/sink/postgres-pool.js";
import { PostgresSink } from "../../shared/adapters/sink/postgres-sink.js";
import type { MergeBranches, ReconcileReport } from "../../shared/adapters/sink/sink-tables.js";
import { SqliteSink } from "../../shared/adapters/sink/sqlite-sink.js";
import { branchesOf, type MergeConfig, type SluiceConfig, sinkOf } from "../../shared/contract/config.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import type { LateRecord, ShardCheckpoint, SinkInspector } from "../../shared/contract/ports.js";
import { EVENT_TIME_MAX_KEY } from "../../shared/pipeline/stages/event-time-stage.js";
import { type ClusterFile, openSinkInspector, readClusterConfig, readClusterFile } from "./cluster-file.js";

/** The merges `--merge` names (all of them without it). */
function mergesOf(cfg: SluiceConfig, name: string | undefined): MergeConfig[] {
  if (name === undefined) return cfg.merges;
  const m = cfg.merges.find((x) => x.name === name);
  if (!m)
    throw new SluiceError(
      ErrorCode.InvalidConfig,
      `no merge '${name}' in the cluster's config (merges: ${cfg.merges.map((x) => x.name).join(", ") || "none"})`,
    );
  return [m];
}

const branchesFor = (cfg: SluiceConfig, m: MergeConfig): MergeBranches => ({
  merge: m.name,
  policy: m.policy,
  branches: branchesOf(cfg, m.name).map((p) => ({ pipeline: p.name, priority: p.merge!.priority })),
});

async function withInspector<T>(c: ClusterFile, fn: (i: SinkInspector) => Promise<T>): Promise<T> {
  const inspector = openSinkInspector(c);
  try {
    return await fn(inspector);
  } finally {
    await inspector.close();
  }
}

/** Applies a merge's pending late records in its branches' sink (SQLite's file, or PostgreSQL). */
async function reconcile(c: ClusterFile, cfg: SluiceConfig, m: MergeConfig): Promise<ReconcileReport> {
  const branches = branchesFor(cfg, m);
  const sink = sinkOf(cfg, branchesOf(cfg, m.name)[0]!);
  if (sink.type === "sqlite") {
    const s = new SqliteSink(c.sqlite, { pipelines: [] });
    try {
      return await s.reconcileLate(branches);
    } finally {
      await s.close();
    }
  }
  if (sink.type === "postgres") {
    const pool = postgresPool(sink, { max: 1, name: "sluice-late-reconcile" });
    try {
      return await new PostgresSink(pool, { pipelines: [] }).reconcileLate(branches);
    } finally {
      await pool.end();
    }
  }
  throw new SluiceError(ErrorCode.InvalidConfig, `merge '${m.name}': an output stream holds no merge`);
}

export interface MergeStatus {
  merge: string;
  policy: string;
  /** The lowest watermark over the branches' shards, ms: rows are final below it (null: a shard has none yet). */
  convergence: number | null;
  rows: number;
  branches: Array<{
    pipeline: string;
    priority: number;
    /** The branch's lowest shard watermark, ms (null: a shard has none yet). */
    watermark: number | null;
    /** How far its watermark trails the most advanced branch's, ms. */
    lagMs: number | null;
    pendingLate: number;
  }>;
}

/** A merge's convergence from its branches' checkpoints (the watermark each holds). */
export function mergeStatus(
  cfg: SluiceConfig,
  m: MergeConfig,
  checkpoints: readonly ShardCheckpoint[],
  rows: number,
  late: ReadonlyMap<string, readonly LateRecord[]>,
): MergeStatus {
  const branches = branchesOf(cfg, m.name).map((p) => {
    let lowest: number | null = null;
    let missing = false;
    for (let shard = 0; shard < p.shards; shard++) {
      const cp = checkpoints.find((x) => x.pipeline === p.name && x.shard === shard);
      const max = cp?.state?.[EVENT_TIME_MAX_KEY];
      if (typeof max !== "number") {
        missing = true;
        continue;
      }
      const w = max - (p.lateness?.allowed ?? 0);
      if (lowest === null || w < lowest) lowest = w;
    }
    return {
      pipeline: p.name,
      priority: p.merge!.priority,
      watermark: missing ? null : lowest,
      pendingLate: (late.get(p.name) ?? []).filter((l) => !l.reconciled).length,
    };
  });
  const known = branches.map((b) => b.watermark).filter((w): w is number => w !== null);
  const highest = known.length > 0 ? Math.max(...known) : null;
  const convergence = known.length === branches.length && known.length > 0 ? Math.min(...known) : null;
  return {
    merge: m.name,
    policy: m.policy,
    convergence,
    rows,
    branches: branches.map((b) => ({
      ...b,
      lagMs: b.watermark === null || highest === null ? null : highest - b.watermark,
    })),
  };
}

const iso = (ms: number | null): string =>
  ms === null ? "none yet" : `${new Date(ms).toISOString()} (${ms})`;

export function formatMergeStatus(s: MergeStatus): string {
  return [
    `merge ${s.merge} (${s.policy}): ${s.rows} rows, final below ${iso(s.convergence)}`,
    ...s.branches.map(
      (b) =>
        `  ${b.pipeline} (priority ${b.priority}): watermark ${iso(b.watermark)}, lag ${b.lagMs === null ? "-" : `${b.lagMs} ms`}, ${b.pendingLate} late record(s) pending`,
    ),
  ].join("\n");
}

interface MergeCommandOptions {
  dir: string;
  merge?: string;
  json?: boolean;
}

/** A command's options, `--dir`, `--merge` and `--json`, and its cluster's file and config. */
function mergeCommand(
  cmd: Command,
  mergeHelp: string,
  action: (o: MergeCommandOptions, c: ClusterFile, cfg: SluiceConfig) => Promise<void>,
): Command {
  return cmd
    .option("--dir <dir>", "cluster directory", ".sluice")
    .option("--merge <m>", mergeHelp)
    .option("--json", "JSON output")
    .action(async (o: MergeCommandOptions) => {
      const c = readClusterFile(o.dir);
      await action(o, c, readClusterConfig(c));
    });
}

export function addMergeCommands(program: Command): void {
  const late = program
    .command("late")
    .description("records late by their event time, and their reconciliation");
  mergeCommand(
    late.command("list").description("per branch: late records pending and reconciled, and the newest few"),
    "only this merge's branches (default: every pipeline with lateness)",
    async (o, c, cfg) => {
      const pipelines = o.merge
        ? branchesOf(cfg, mergesOf(cfg, o.merge)[0]!.name).map((p) => p.name)
        : cfg.pipelines.filter((p) => p.lateness).map((p) => p.name);
      const out = await withInspector(c, async (i) => {
        const r: Record<string, LateRecord[]> = {};
        for (const p of pipelines) r[p] = (await i.lateRecords?.(p)) ?? [];
        return r;
      });
      if (o.json) {
        console.log(JSON.stringify(out, null, 2));
        return;
      }
      for (const [p, list] of Object.entries(out)) {
        const pending = list.filter((l) => !l.reconciled);
        console.log(`${p}: ${list.length} late record(s), ${pending.length} pending reconciliation`);
        for (const l of pending.slice(-5))
          console.log(
            `  shard ${l.shard} seq ${l.sourceSeq} ${l.recordId}: event time ${iso(l.eventTime)} below watermark ${iso(l.watermark)}`,
          );
      }
    },
  );
  mergeCommand(
    late
      .command("reconcile")
      .description("apply every pending late record to its merge by the policy, and mark it reconciled"),
    "only this merge (default: every merge)",
    async (o, c, cfg) => {
      const reports: ReconcileReport[] = [];
      for (const m of mergesOf(cfg, o.merge)) reports.push(await reconcile(c, cfg, m));
      if (o.json) console.log(JSON.stringify(reports, null, 2));
      else for (const r of reports) console.log(`${r.merge}: reconciled ${r.reconciled} late record(s)`);
    },
  );
  mergeCommand(
    program
      .command("merge")
      .description("merges of parallel branches")
      .command("status")
      .description("each merge's convergence watermark (its rows are final below it) and each branch's lag"),
    "only this merge (default: every merge)",
    async (o, c, cfg) => {
      const statuses = await withInspector(c, async (i) => {
        const checkpoints = await i.checkpoints();
        const out: MergeStatus[] = [];
        for (const m of mergesOf(cfg, o.merge)) {
          const late = new Map<string, LateRecord[]>();
          for (const p of branchesOf(cfg, m.name)) late.set(p.name, (await i.lateRecords?.(p.name)) ?? []);
          const rows = ((await i.mergeRows?.(m.name)) ?? []).length;
          out.push(mergeStatus(cfg, m, checkpoints, rows, late));
        }
        return out;
      });
      console.log(o.json ? JSON.stringify(statuses, null, 2) : statuses.map(formatMergeStatus).join("\n"));
    },
  );
}
