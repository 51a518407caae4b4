/**
 * When a worker's keep-alive thread re-sends the worker's last heartbeat. Pure: the thread
 * feeds the times it observed and performs the returned action.
 *
 * The worker's event loop sends a heartbeat every `heartbeatMs` and hands each one to the
 * thread as well. A loop that has missed a beat is stalled (a long run of batch work on a
 * CPU-starved machine); the thread then re-sends the last heartbeat every `heartbeatMs`, so
 * the coordinator does not move the shards of a busy, healthy worker. It stops after
 * `stallLimitMs` without a heartbeat from the loop: a loop stuck that long is treated as dead,
 * and the coordinator moves its shards `failureTimeoutMs` later.
 */

export interface KeepAliveTiming {
  /** The worker's heartbeat interval, ms. */
  heartbeatMs: number;
  /** Longest time since the loop's last heartbeat that keep-alives cover, ms. */
  stallLimitMs: number;
}

export interface KeepAliveClock {
  /** When the loop last handed over a heartbeat, ms (local clock). */
  lastBeatAt: number;
  /** When the thread last re-sent one, ms; older than `lastBeatAt` when it has not since. */
  lastKeepAliveAt: number;
}

export type KeepAliveAction =
  /** The loop is beating, or a keep-alive went out less than `heartbeatMs` ago. */
  | { type: "wait" }
  /** Re-send the last heartbeat now; `stalledMs` is the time since the loop's last one. */
  | { type: "send"; stalledMs: number }
  /** The loop has been silent past `stallLimitMs`: no more keep-alives until it beats again. */
  | { type: "expired"; stalledMs: number };

/**
 * A beat is missed once half an interval more than `heartbeatMs` has passed without one: the
 * loop's own timer is late by then, not merely jittery.
 */
export const MISSED_BEAT_FACTOR = 1.5;

export function keepAliveAction(
  clock: KeepAliveClock,
  now: number,
  timing: KeepAliveTiming,
): KeepAliveAction {
  const stalledMs = now - clock.lastBeatAt;
  if (stalledMs <= timing.heartbeatMs * MISSED_BEAT_FACTOR) return { type: "wait" };
  if (stalledMs > timing.stallLimitMs) return { type: "expired", stalledMs };
  if (clock.lastKeepAliveAt > clock.lastBeatAt && now - clock.lastKeepAliveAt < timing.heartbeatMs)
    return { type: "wait" };
  return { type: "send", stalledMs };
}
