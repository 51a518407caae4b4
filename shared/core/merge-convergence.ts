/**
 * How far a merge has converged (README "Merges"): each branch shard's watermark is its
 * checkpoint's highest event time minus the branch's allowed lateness; a merge's rows are final
 * below its convergence watermark, the lowest over every shard of every branch. Computed from
 * checkpoints alone, so the CLI, the dashboard and the metrics agree on it.
 */
import type { MergeConfig, SluiceConfig } from "../contract/config.js";
import type { Checkpoint, LateRecord } from "../contract/ports.js";

/** State key of the shard's highest event time so far (ms); absent before its first record. */
export const EVENT_TIME_MAX_KEY = "eventTimeMax";

export interface MergeBranchStatus {
  pipeline: string;
  priority: number;
  /** The branch's lowest shard watermark, ms since the epoch (null: a shard has none yet). */
  watermark: number | null;
  /** How far its watermark trails the most advanced branch's, ms (null: unknown). */
  lagMs: number | null;
  /** Late records not yet reconciled (null: not read). */
  pendingLate: number | null;
}

export interface MergeStatus {
  merge: string;
  policy: string;
  /** The lowest watermark over the branches' shards, ms: rows are final below it (null: a shard has none yet). */
  convergence: number | null;
  /** Rows of the merge's table (null: not read). */
  rows: number | null;
  branches: MergeBranchStatus[];
}

/** A shard's checkpoint by pipeline and index; null or undefined when the sink holds none (or did not answer). */
export type CheckpointLookup = (pipeline: string, shard: number) => Checkpoint | null | undefined;

/** A lookup over a list of checkpoints, as an inspector returns them. */
export function checkpointLookup(
  checkpoints: readonly (Checkpoint & { pipeline: string; shard: number })[],
): CheckpointLookup {
  const byKey = new Map(checkpoints.map((c) => [`${c.pipeline}.${c.shard}`, c]));
  return (pipeline, shard) => byKey.get(`${pipeline}.${shard}`);
}

/**
 * A merge's convergence from its branches' checkpoints. `late` maps a branch to its late
 * records (absent branch: pending unknown, or 0 when `late` is given for others).
 */
export function mergeStatus(
  cfg: Pick<SluiceConfig, "pipelines">,
  m: Pick<MergeConfig, "name" | "policy">,
  checkpoint: CheckpointLookup,
  rows: number | null,
  late: ReadonlyMap<string, readonly Pick<LateRecord, "reconciled">[]> | null,
): MergeStatus {
  const branches = cfg.pipelines
    .filter((p) => p.merge?.into === m.name)
    .map((p) => {
      let lowest: number | null = null;
      let missing = false;
      for (let shard = 0; shard < p.shards; shard++) {
        const max = checkpoint(p.name, shard)?.state?.[EVENT_TIME_MAX_KEY];
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
        pendingLate: late ? (late.get(p.name) ?? []).filter((l) => !l.reconciled).length : null,
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
