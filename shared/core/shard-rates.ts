/**
 * Records per second per shard, from two samples of a progress counter taken some time apart.
 * Pure: `sluice status --watch` and the coordinator's dashboard feed it what they polled.
 *
 * The counter is not the committed stream sequence: the input stream interleaves every shard
 * of a pipeline, so a shard's committed sequence advances by the whole stream's traffic, not
 * by its own records. What counts one shard's records is its consumer's acknowledged delivery
 * sequence (`ack_floor.consumer_seq` of `P-sN-eE`): every delivery of the shard, acked only
 * after the sink committed it (a rare redelivery counts twice). Each epoch has its own
 * consumer, which starts counting at 0, so the counter carries its consumer's name.
 */

export interface ShardProgress {
  /** Identity of the counter (the consumer name); a different one started again from 0. */
  counter: string;
  /** Records counted by `counter` so far. */
  count: number;
}

export interface ProgressSample {
  /** Wall-clock ms of the sample. */
  at: number;
  /** Shard key -> its counter, or null when unknown (no owner, no consumer yet, query failed). */
  shards: Record<string, ShardProgress | null>;
}

export interface ShardRates {
  /** Sum of the known per-shard rates, records/s. */
  total: number;
  /** Shard key -> records/s; null when there is no earlier sample to compare with. */
  perShard: Record<string, number | null>;
}

/** Rates over the interval between `prev` and `next`; all null on the first sample. */
export function shardRates(prev: ProgressSample | null, next: ProgressSample): ShardRates {
  const perShard: Record<string, number | null> = {};
  let total = 0;
  const seconds = prev ? (next.at - prev.at) / 1000 : 0;
  for (const [shard, cur] of Object.entries(next.shards)) {
    if (!prev || seconds <= 0 || !cur) {
      perShard[shard] = prev && seconds > 0 ? 0 : null;
      continue;
    }
    const before = prev.shards[shard];
    // A new counter (a new epoch's consumer, or one recreated after a restart) began at 0 after
    // the earlier sample saw the old one, so all of its count falls into this interval.
    const restarted = !before || before.counter !== cur.counter || cur.count < before.count;
    const delta = restarted ? cur.count : cur.count - before.count;
    const rate = Math.max(0, delta) / seconds;
    perShard[shard] = rate;
    total += rate;
  }
  return { total, perShard };
}
