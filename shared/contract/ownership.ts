/**
 * Shared vocabulary of the ownership protocol. Pure data: no IO, no clocks.
 */

/** Identifies a shard of a pipeline. `shard` is 0-based, < the pipeline's shard count. */
export interface ShardRef {
  pipeline: string;
  shard: number;
}

export function shardKey(ref: ShardRef): string {
  return `${ref.pipeline}.${ref.shard}`;
}

export function parseShardKey(key: string): ShardRef | undefined {
  const dot = key.lastIndexOf(".");
  if (dot <= 0) return undefined;
  const shard = Number(key.slice(dot + 1));
  if (!Number.isInteger(shard) || shard < 0) return undefined;
  return { pipeline: key.slice(0, dot), shard };
}

/**
 * The replicated assignment of one shard, stored in KV under `shardKey`.
 * Invariant: `epoch` strictly increases whenever the shard gets a new owner (written with CAS);
 * an entry may drop to `owner: null` at the same epoch when no member is left, and the next
 * owner then gets `epoch + 1`, so no two owners ever share an epoch.
 * - `active`: `owner` may consume and commit at `epoch`. With `next` set, the coordinator
 *   means to move the shard there: `next` prepares its lease of `epoch + 1` (opens its
 *   consumer) and reports it in its heartbeats, while `owner` goes on committing.
 * - `revoking`: `owner` must stop pulling, commit its in-flight batch, ack and release;
 *   the coordinator then hands the shard to `next` at `epoch + 1`.
 */
export interface AssignmentEntry {
  owner: string | null;
  epoch: number;
  phase: "active" | "revoking";
  next?: string | null;
  /** Wall-clock ms when the coordinator wrote the entry (diagnostics only). */
  at: number;
}

/** A shard whose commits keep failing: the sink is unavailable to it (see `BatchCommitter`). */
export interface SinkTrouble {
  /** When its commits began to fail, ms since the epoch (the worker's clock). */
  since: number;
  /** The last failure. */
  error: string;
  /** The shard's circuit breaker: `closed` (retrying), `open` (cooling down), `half-open` (trying). */
  breaker: "closed" | "open" | "half-open";
}

/** A shard holding its records until a stage's input is there (a schema subject not registered). */
export interface StageWait {
  /** Since when, ms since the epoch (the worker's clock). */
  since: number;
  reason: string;
}

/** A quality rule's counts on one worker since it started. */
export interface RuleCounts {
  /** Records the rule checked. */
  checked: number;
  /** Failed and dead-lettered (enforced). */
  rejected: number;
  /** Failed but kept (shadowed). */
  shadowed: number;
}

/** What a worker says about itself in every heartbeat. */
export interface Heartbeat {
  worker: string;
  /** Relative share of shards to give this worker; equal workers get counts within 1. */
  capacity: number;
  /** Shards the worker currently holds (acquiring, active or draining), key -> epoch. */
  held: Record<string, number>;
  /**
   * Shards moving here whose next lease this worker has prepared (its consumer is open),
   * key -> the epoch prepared (`epoch + 1` of the entry naming it `next`).
   */
  prepared?: Record<string, number>;
  /** True once the worker is draining to leave: it gets no new shards. */
  leaving: boolean;
  /** Worker's wall-clock send time in ms, used to measure heartbeat delay. */
  sentAt: number;
  /** Shards whose commits keep failing, key -> since when and why (absent when none). */
  sinkTrouble?: Record<string, SinkTrouble>;
  /** Shards waiting for a stage's input, key -> since when and why (absent when none). */
  waiting?: Record<string, StageWait>;
  /** Quality rules' counts, `pipeline.rule` -> counts (absent when no pipeline has rules). */
  rules?: Record<string, RuleCounts>;
}
