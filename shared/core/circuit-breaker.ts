/**
 * A per-shard circuit breaker around sink commits, as a pure state machine on an injected
 * clock: `closed` (commits go through), `open` (a run of failures: commits wait out a cool-down
 * instead of hammering a sink that keeps failing, while other shards go on), `half-open` (one
 * trial commit decides: success closes, failure opens again with a longer cool-down).
 *
 * It decides only when to try; it never skips a batch. A shard whose circuit is open stalls
 * with its batch in hand, and the batch is committed (or the lease lost) once the sink answers.
 */

export type BreakerState =
  | { kind: "closed"; failures: number }
  | { kind: "open"; since: number; coolDownMs: number; opened: number }
  | { kind: "half-open"; opened: number };

export interface BreakerSettings {
  /** Consecutive failures that open the circuit. */
  failureThreshold: number;
  /** First cool-down after opening, ms; doubled each time it opens again, up to `maxCoolDownMs`. */
  coolDownMs: number;
  maxCoolDownMs: number;
}

export const defaultBreakerSettings: BreakerSettings = {
  failureThreshold: 5,
  coolDownMs: 500,
  maxCoolDownMs: 10_000,
};

export const closedBreaker: BreakerState = { kind: "closed", failures: 0 };

/** Whether a commit may be tried at `now`, and how long to wait first when not. */
export function mayTry(s: BreakerState, now: number): { ok: true } | { ok: false; waitMs: number } {
  if (s.kind !== "open") return { ok: true };
  const left = s.since + s.coolDownMs - now;
  return left <= 0 ? { ok: true } : { ok: false, waitMs: left };
}

/** The state once a commit is tried at `now` (an open circuit past its cool-down goes half-open). */
export function onTry(s: BreakerState, now: number): BreakerState {
  if (s.kind === "open" && now >= s.since + s.coolDownMs) return { kind: "half-open", opened: s.opened };
  return s;
}

/** The state after a commit succeeded. */
export function onSuccess(_s: BreakerState): BreakerState {
  return closedBreaker;
}

/** The state after a commit failed at `now` for a reason retrying may cure. */
export function onFailure(
  s: BreakerState,
  now: number,
  cfg: BreakerSettings = defaultBreakerSettings,
): BreakerState {
  switch (s.kind) {
    case "closed": {
      const failures = s.failures + 1;
      return failures >= cfg.failureThreshold
        ? { kind: "open", since: now, coolDownMs: cfg.coolDownMs, opened: 1 }
        : { kind: "closed", failures };
    }
    case "half-open": {
      const coolDownMs = Math.min(cfg.maxCoolDownMs, cfg.coolDownMs * 2 ** s.opened);
      return { kind: "open", since: now, coolDownMs, opened: s.opened + 1 };
    }
    case "open":
      return { ...s, since: now };
  }
}
