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
import {
  checkpointLookup,
  mergeStatus as convergenceOf,
  type MergeStatus,
} from "../../shared/core/merge-convergence.js";
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
export async function reconcileMerge(
  c: ClusterFile,
  cfg: SluiceConfig,
  m: MergeConfig,
): Promise<ReconcileReport> {
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

/** A merge's convergence from its branches' checkpoints (the watermark each holds). */
export function mergeStatus(
  cfg: SluiceConfig,
  m: MergeConfig,
  checkpoints: readonly ShardCheckpoint[],
  rows: number,
  late: ReadonlyMap<string, readonly LateRecord[]>,
): MergeStatus {
  return convergenceOf(cfg, m, checkpointLookup(checkpoints), rows, late);
}

/**
 * Every merge's status read through the sink's inspector: checkpoints (unless given), each
 * branch's late records and the merge's rows.
 */
export async function gatherMergeStatus(
  cfg: SluiceConfig,
  i: SinkInspector,
  merges: readonly MergeConfig[] = cfg.merges,
  checkpoints?: readonly ShardCheckpoint[],
): Promise<MergeStatus[]> {
  if (merges.length === 0) return [];
  const cps = checkpoints ?? (await i.checkpoints());
  const out: MergeStatus[] = [];
  for (const m of merges) {
    const late = new Map<string, LateRecord[]>();
    for (const p of branchesOf(cfg, m.name)) late.set(p.name, (await i.lateRecords?.(p.name)) ?? []);
    const rows = ((await i.mergeRows?.(m.name)) ?? []).length;
    out.push(mergeStatus(cfg, m, cps, rows, late));
  }
  return out;
}

const iso = (ms: number | null): string =>
  ms === null ? "none yet" : `${new Date(ms).toISOString()} (${ms})`;

export type { MergeStatus };

export function formatMergeStatus(s: MergeStatus): string {
  return [
    `merge ${s.merge} (${s.policy}): ${s.rows === null ? "" : `${s.rows} rows, `}final below ${iso(s.convergence)}`,
    ...s.branches.map(
      (b) =>
        `  ${b.pipeline} (priority ${b.priority}): watermark ${iso(b.watermark)}, lag ${b.lagMs === null ? "-" : `${b.lagMs} ms`}${b.pendingLate === null ? "" : `, ${b.pendingLate} late record(s) pending`}`,
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
      for (const m of mergesOf(cfg, o.merge)) reports.push(await reconcileMerge(c, cfg, m));
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
      const statuses = await withInspector(c, (i) => gatherMergeStatus(cfg, i, mergesOf(cfg, o.merge)));
      console.log(o.json ? JSON.stringify(statuses, null, 2) : statuses.map(formatMergeStatus).join("\n"));
    },
  );
}
