import { describe, expect, it } from "vitest";
import {
  type BreakerState,
  closedBreaker,
  defaultBreakerSettings,
  mayTry,
  onFailure,
  onSuccess,
  onTry,
} from "../../shared/core/circuit-breaker.js";

const cfg = { failureThreshold: 3, coolDownMs: 100, maxCoolDownMs: 400 };

describe("the per-shard circuit breaker (pure, explicit time)", () => {
  it("stays closed below the threshold and opens at it", () => {
    let s: BreakerState = closedBreaker;
    for (let i = 0; i < 2; i++) s = onFailure(s, 0, cfg);
    expect(s).toEqual({ kind: "closed", failures: 2 });
    expect(mayTry(s, 0)).toEqual({ ok: true });
    s = onFailure(s, 10, cfg);
    expect(s).toEqual({ kind: "open", since: 10, coolDownMs: 100, opened: 1 });
    expect(mayTry(s, 50)).toEqual({ ok: false, waitMs: 60 });
  });

  it("goes half-open after the cool-down; one success closes it", () => {
    let s: BreakerState = { kind: "open", since: 0, coolDownMs: 100, opened: 1 };
    expect(onTry(s, 99)).toBe(s);
    s = onTry(s, 100);
    expect(s).toEqual({ kind: "half-open", opened: 1 });
    expect(mayTry(s, 100)).toEqual({ ok: true });
    expect(onSuccess(s)).toEqual(closedBreaker);
  });

  it("a failed trial opens it again with a doubled cool-down, capped", () => {
    let s: BreakerState = { kind: "half-open", opened: 1 };
    s = onFailure(s, 500, cfg);
    expect(s).toEqual({ kind: "open", since: 500, coolDownMs: 200, opened: 2 });
    s = onFailure(onTry(s, 700), 700, cfg);
    expect(s).toEqual({ kind: "open", since: 700, coolDownMs: 400, opened: 3 });
    s = onFailure(onTry(s, 1100), 1100, cfg);
    expect(s).toMatchObject({ kind: "open", coolDownMs: 400 });
  });

  it("never decides to skip: every state says when to try next", () => {
    const states: BreakerState[] = [
      closedBreaker,
      { kind: "half-open", opened: 2 },
      { kind: "open", since: 0, coolDownMs: 10_000, opened: 4 },
    ];
    for (const s of states) {
      const g = mayTry(s, 5);
      expect(g.ok || g.waitMs > 0).toBe(true);
    }
    expect(defaultBreakerSettings.failureThreshold).toBeGreaterThan(1);
  });
});
