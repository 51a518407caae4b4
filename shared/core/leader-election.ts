/**
 * Coordinator leadership through one compare-and-set KV entry. Pure: the caller feeds what
 * it observed and the time, and performs the returned action.
 *
 * Safety does not rest on this lease (the sink's epoch fence does); the lease only keeps
 * two coordinators from fighting over the same writes. Liveness: a standby takes over once
 * the entry has not changed for `ttlMs` by its own clock, so no clock comparison across
 * processes is needed.
 */

export interface LeaderRecord {
  holder: string;
  /** Increases by one on every change of holder. */
  term: number;
}

export interface LeaderObservation {
  record: LeaderRecord | null;
  /** KV revision of `record`; 0 when absent. */
  revision: number;
  /** Local time (ms) when this revision was first observed. */
  observedAt: number;
}

export interface LeaderTiming {
  /** The leader renews every `ttlMs / 3`; a standby takes over after `ttlMs` of silence. */
  ttlMs: number;
}

export type LeaderAction =
  | { type: "create"; record: LeaderRecord }
  | { type: "renew"; record: LeaderRecord; expectedRevision: number }
  | { type: "takeover"; record: LeaderRecord; expectedRevision: number }
  | { type: "wait" };

export function leaderAction(
  obs: LeaderObservation,
  self: string,
  now: number,
  timing: LeaderTiming,
): LeaderAction {
  const r = obs.record;
  if (r === null) return { type: "create", record: { holder: self, term: 1 } };
  if (r.holder === self) {
    if (now - obs.observedAt >= timing.ttlMs / 3) {
      return { type: "renew", record: r, expectedRevision: obs.revision };
    }
    return { type: "wait" };
  }
  if (now - obs.observedAt >= timing.ttlMs) {
    return { type: "takeover", record: { holder: self, term: r.term + 1 }, expectedRevision: obs.revision };
  }
  return { type: "wait" };
}

/**
 * Whether `self` may act as leader: it holds the record and renewed it (saw its own
 * revision) within the last `ttlMs`, so no standby can have taken over yet.
 */
export function isLeader(obs: LeaderObservation, self: string, now: number, timing: LeaderTiming): boolean {
  return obs.record?.holder === self && now - obs.observedAt < timing.ttlMs;
}
