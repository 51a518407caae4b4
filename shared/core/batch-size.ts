/**
 * How many records the next sink transaction of a shard may take: additive-increase,
 * multiplicative-decrease on commit latency, driven by lag. Large batches amortise the
 * per-commit cost (one transaction, one ack, one request to the sink) when a shard is behind;
 * a commit slower than the target halves the limit, because a long commit delays hand-offs
 * (a drain waits for the batch in flight) and widens the window between a lease check and the
 * write it guards. Pure: no clock, no IO.
 */

export interface BatchSizing {
  /** Smallest limit, records (>= 1). */
  min: number;
  /** Largest limit, records: the configured `batchMax`. */
  max: number;
  /** A commit slower than this halves the limit, ms. */
  targetCommitMs: number;
}

export interface BatchObservation {
  /** Records in the batch just committed. */
  size: number;
  /** Its sink transaction, ms. */
  commitMs: number;
  /** Records of the shard still waiting after it (the source's pending count); unknown: undefined. */
  lag: number | undefined;
}

/** The limit for the next batch, given the current one and what the last commit showed. */
export function nextBatchLimit(limit: number, obs: BatchObservation, s: BatchSizing): number {
  const lo = Math.max(1, Math.min(s.min, s.max));
  const current = Math.min(s.max, Math.max(lo, Math.floor(limit)));
  if (obs.commitMs > s.targetCommitMs) return Math.max(lo, Math.floor(current / 2));
  // Grow only when the batch was full and more is waiting: a shard that keeps up needs no more.
  const behind = obs.lag === undefined ? obs.size >= current : obs.lag > 0 && obs.size >= current;
  if (behind && obs.commitMs <= s.targetCommitMs / 2) return Math.min(s.max, current * 2);
  return current;
}

/**
 * Messages a shard's consumer keeps pulled ahead: two batches, but never so many that they and
 * the batch being committed exceed `maxAckPending`.
 */
export function feedBufferMessages(w: { batchMax: number; maxAckPending: number }): number {
  return Math.max(1, Math.min(w.batchMax * 2, w.maxAckPending - w.batchMax));
}

/** The in-flight bounds of one shard's consumer, records. */
export interface ShardFlow {
  /** The consumer's max unacknowledged messages: what the server lets the worker hold. */
  maxAckPending: number;
  /** Largest batch, at most half of `maxAckPending`. */
  batchMax: number;
  /** Messages the client keeps pulled ahead (`feedBufferMessages`). */
  bufferMessages: number;
}

/** No shard's share goes below this many records, however many shards a worker owns. */
export const MIN_SHARD_IN_FLIGHT = 64;

/**
 * A shard's share of its worker's in-flight budget when the worker owns `shards` shards:
 * `maxBufferedRecords / shards`, capped by `maxAckPending` and floored at
 * `MIN_SHARD_IN_FLIGHT`. The server enforces it (max_ack_pending), so a worker holds at most
 * max(`maxBufferedRecords`, 64 x shards) records whatever the backlog. Pure.
 */
export function shardFlow(
  w: { batchMax: number; maxAckPending: number; maxBufferedRecords: number },
  shards: number,
): ShardFlow {
  const share = Math.floor(w.maxBufferedRecords / Math.max(1, shards));
  const maxAckPending = Math.max(
    Math.min(MIN_SHARD_IN_FLIGHT, w.maxAckPending),
    Math.min(w.maxAckPending, share),
  );
  const batchMax = Math.max(1, Math.min(w.batchMax, Math.floor(maxAckPending / 2)));
  return { maxAckPending, batchMax, bufferMessages: feedBufferMessages({ batchMax, maxAckPending }) };
}
