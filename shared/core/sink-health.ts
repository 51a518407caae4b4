/**
 * The sink's health as `status` and the dashboard show it: whether the read side answered, and
 * the shards whose commits keep failing on their workers (each worker's heartbeat lists its
 * own). Pure: the caller hands in the time of the observation.
 */
import type { SinkTrouble } from "../contract/ownership.js";

export interface ShardSinkTrouble {
  /** The worker reporting it. */
  worker: string;
  /** How long its commits have been failing, ms (clamped at 0 across clock skew). */
  sinceMsAgo: number;
  /** The last failure. */
  error: string;
  /** The shard's circuit breaker: `closed`, `open` or `half-open`. */
  breaker: SinkTrouble["breaker"];
}

export interface SinkHealth {
  /** The sink's read side answered this observation. */
  reachable: boolean;
  /** Why it did not answer. */
  error: string | null;
  /** Shard -> its trouble, for every shard that cannot commit. */
  trouble: Record<string, ShardSinkTrouble>;
  /** False when the sink is unreachable or any shard cannot commit. */
  healthy: boolean;
}

export function sinkHealth(
  members: Readonly<Record<string, { sinkTrouble?: Record<string, SinkTrouble> }>>,
  readError: string | null,
  now: number,
): SinkHealth {
  const trouble: Record<string, ShardSinkTrouble> = {};
  for (const [worker, m] of Object.entries(members))
    for (const [shard, t] of Object.entries(m.sinkTrouble ?? {}))
      trouble[shard] = { worker, sinceMsAgo: Math.max(0, now - t.since), error: t.error, breaker: t.breaker };
  return {
    reachable: readError === null,
    error: readError,
    trouble,
    healthy: readError === null && Object.keys(trouble).length === 0,
  };
}
