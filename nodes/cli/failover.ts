import Database from "better-sqlite3";

export interface FailoverMeasure {
  /** shard -> ms from the kill until its first commit by another worker (null: none yet). */
  perShard: Record<string, number | null>;
  /** The slowest shard's failover, ms; null if any shard has not committed again. */
  maxMs: number | null;
}

/** Failover as the sink saw it: kill time to the first commit of each affected shard elsewhere. */
export function measureFailover(
  sinkPath: string,
  pipeline: string,
  shards: readonly number[],
  killedWorker: string,
  killedAt: number,
): FailoverMeasure {
  const db = new Database(sinkPath, { readonly: true, fileMustExist: true });
  try {
    const q = db.prepare(
      `SELECT MIN(committed_at) AS t FROM "${pipeline.replaceAll('"', '""')}" WHERE shard = ? AND worker != ? AND committed_at >= ?`,
    );
    const perShard: Record<string, number | null> = {};
    let maxMs: number | null = 0;
    for (const s of shards) {
      const row = q.get(s, killedWorker, killedAt) as { t: number | null };
      const ms = row.t === null ? null : row.t - killedAt;
      perShard[`${pipeline}.${s}`] = ms;
      maxMs = ms === null || maxMs === null ? null : Math.max(maxMs, ms);
    }
    return { perShard, maxMs: shards.length === 0 ? null : maxMs };
  } finally {
    db.close();
  }
}
