import type { SinkInspector } from "../../shared/contract/ports.js";

export interface FailoverMeasure {
  /** shard -> ms from the kill until its first commit by another worker (null: none yet). */
  perShard: Record<string, number | null>;
  /** The slowest shard's failover, ms; null if any shard has not committed again. */
  maxMs: number | null;
}

/**
 * The first commit of a shard at or after `sinceMs` by a worker other than `notBy`, ms since the
 * epoch; null when there is none yet. Read from the sink's commit times.
 */
export async function firstCommitAfter(
  sink: SinkInspector,
  pipeline: string,
  shard: number,
  sinceMs: number,
  notBy: string,
): Promise<number | null> {
  let first: number | null = null;
  for (const r of await sink.rows(pipeline, { shard, sinceMs })) {
    if (r.worker !== notBy && (first === null || r.committedAt < first)) first = r.committedAt;
  }
  return first;
}

/** Failover as the sink saw it: kill time to the first commit of each affected shard elsewhere. */
export async function measureFailover(
  sink: SinkInspector,
  pipeline: string,
  shards: readonly number[],
  killedWorker: string,
  killedAt: number,
): Promise<FailoverMeasure> {
  const perShard: Record<string, number | null> = {};
  let maxMs: number | null = 0;
  for (const s of shards) {
    const t = await firstCommitAfter(sink, pipeline, s, killedAt, killedWorker);
    const ms = t === null ? null : t - killedAt;
    perShard[`${pipeline}.${s}`] = ms;
    maxMs = ms === null || maxMs === null ? null : Math.max(maxMs, ms);
  }
  return { perShard, maxMs: shards.length === 0 ? null : maxMs };
}
