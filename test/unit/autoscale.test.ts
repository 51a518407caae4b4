import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../shared/contract/config.js";
import {
  backlogByPipeline,
  initialScaling,
  type ScalingPolicy,
  type ScalingState,
  scaleStep,
  scalingPolicy,
  scalingTarget,
} from "../../shared/core/autoscale.js";

const policy: ScalingPolicy = {
  recordsPerWorker: 100_000,
  minWorkers: 2,
  maxWorkers: 8,
  scaleUpAfterMs: 30_000,
  scaleDownAfterMs: 300_000,
};

/** Feeds one backlog sample per second from `from` (ms) for `seconds`; returns the state after each. */
function run(s: ScalingState, backlog: number, from: number, seconds: number): ScalingState[] {
  const out: ScalingState[] = [];
  for (let i = 0; i < seconds; i++) {
    s = scaleStep(s, backlog, from + i * 1_000, policy);
    out.push(s);
  }
  return out;
}

describe("the worker count the backlog asks for", () => {
  it("targets ceil(backlog / recordsPerWorker) within [min, max]", () => {
    expect(scalingTarget(0, policy)).toBe(2);
    expect(scalingTarget(250_000, policy)).toBe(3);
    expect(scalingTarget(300_000, policy)).toBe(3);
    expect(scalingTarget(300_001, policy)).toBe(4);
    expect(scalingTarget(5_000_000, policy)).toBe(8);
  });

  it("goes up only once a higher target held for scaleUpAfter: a shorter burst moves nothing", () => {
    let s = run(initialScaling(policy), 0, 0, 60).at(-1)!;
    expect(s.desired).toBe(2);
    // A 20 s burst of 600,000 records of backlog, then back to nothing.
    const burst = run(s, 600_000, 60_000, 20);
    expect(burst.map((x) => x.desired)).toEqual(Array(20).fill(2));
    s = run(burst.at(-1)!, 0, 80_000, 10).at(-1)!;
    expect(s.desired).toBe(2);
    // Held: up to 6 once 30 s of samples all ask for it, not before.
    const held = run(s, 600_000, 90_000, 40);
    expect(held[29]!.desired).toBe(2);
    expect(held[30]!.desired).toBe(6);
    expect(held.at(-1)!.desired).toBe(6);
  });

  it("goes down only once every target stayed lower for scaleDownAfter, so the count does not flap", () => {
    let s = run(initialScaling(policy), 800_000, 0, 40).at(-1)!;
    expect(s.desired).toBe(8);
    // The backlog drains, comes back briefly at 2 min, drains again.
    const low = run(s, 100_000, 40_000, 120);
    s = run(low.at(-1)!, 500_000, 160_000, 5).at(-1)!;
    const after = run(s, 100_000, 165_000, 400);
    // Down only to the highest target of the last 300 s: 8 until the last 8 (39 s) leaves the
    // window, 5 until the burst's (164 s) does, then 2. Never down and up again.
    const at = (sec: number) => after[sec - 165]!.desired;
    expect([at(339), at(340), at(464), at(465), at(564)]).toEqual([8, 5, 5, 2, 2]);
    const changes = after.filter((x, i) => i > 0 && x.desired !== after[i - 1]!.desired);
    expect(changes.map((x) => x.desired)).toEqual([5, 2]);
  });

  it("goes up only to the lowest target of the window: a backlog that wavers gets what it always asked for", () => {
    // Targets alternate between 5 and 7 each second for 40 s: every sample asked for at least 5.
    let s = initialScaling(policy);
    const seen: number[] = [];
    for (let i = 0; i < 40; i++) {
      s = scaleStep(s, i % 2 === 0 ? 500_000 : 700_000, i * 1_000, policy);
      seen.push(s.desired);
    }
    expect(seen.slice(0, 30)).toEqual(Array(30).fill(2));
    expect(seen.slice(30)).toEqual(Array(10).fill(5));
  });

  it("decides on the samples' own times: irregular scrapes count by the clock, a gap restarts the window", () => {
    // Scrapes 7 s, 11 s, 13 s apart: the count goes up at the first sample 30 s after the first high one.
    let s = run(initialScaling(policy), 0, 0, 10).at(-1)!;
    const times = [20_000, 27_000, 38_000, 51_000, 58_000, 69_000];
    const desired: number[] = [];
    for (const at of times) {
      s = scaleStep(s, 400_000, at, policy);
      desired.push(s.desired);
    }
    expect(desired).toEqual([2, 2, 2, 4, 4, 4]);
    // No sample for longer than the longer window (Prometheus down): the history is gone, so the
    // first sample after it decides nothing, however low.
    s = scaleStep(s, 0, 69_000 + 400_000, policy);
    expect(s.desired).toBe(4);
    expect(s.samples).toHaveLength(1);
  });

  it("moves only as the windows allow, for any backlog history (checked against the samples themselves)", () => {
    const history = fc.array(
      fc.record({
        gapMs: fc.integer({ min: 500, max: 40_000 }),
        backlog: fc.integer({ min: 0, max: 1_200_000 }),
      }),
      { minLength: 1, maxLength: 200 },
    );
    fc.assert(
      fc.property(history, (h) => {
        let s = initialScaling(policy);
        let at = 0;
        const seen: Array<{ at: number; target: number }> = [];
        for (const { gapMs, backlog } of h) {
          at += gapMs;
          const before = s.desired;
          s = scaleStep(s, backlog, at, policy);
          seen.push({ at, target: scalingTarget(backlog, policy) });
          expect(s.desired).toBeGreaterThanOrEqual(policy.minWorkers);
          expect(s.desired).toBeLessThanOrEqual(policy.maxWorkers);
          // Retained samples reach back to the window's start (none older than the longer window).
          const since = (windowMs: number) => seen.filter((x) => x.at >= at - windowMs);
          const covered = (windowMs: number) =>
            s.samples.length > 0 && s.samples[0]!.at <= at - windowMs && since(windowMs).length > 0;
          if (s.desired > before) {
            // Up: the samples cover scaleUpAfter and every one of them asked for at least this many.
            expect(covered(policy.scaleUpAfterMs)).toBe(true);
            for (const x of since(policy.scaleUpAfterMs)) expect(x.target).toBeGreaterThanOrEqual(s.desired);
          }
          if (s.desired < before) {
            // Down: the samples cover scaleDownAfter and none of them asked for more.
            expect(covered(policy.scaleDownAfterMs)).toBe(true);
            for (const x of since(policy.scaleDownAfterMs)) expect(x.target).toBeLessThanOrEqual(s.desired);
          }
        }
      }),
      { numRuns: 300 },
    );
  });

  it("decides the same from the same samples: a pure function of its inputs", () => {
    const samples = Array.from({ length: 500 }, (_, i) => ((i * 7919) % 13) * 60_000);
    const replay = () =>
      samples.reduce<ScalingState>((s, b, i) => scaleStep(s, b, i * 2_000, policy), initialScaling(policy));
    expect(replay()).toEqual(replay());
  });

  it("sums a pipeline's shard lags, unknown while any shard's is", () => {
    const b = backlogByPipeline([
      { pipeline: "a", lag: 10 },
      { pipeline: "a", lag: 5 },
      { pipeline: "b", lag: 3 },
      { pipeline: "b", lag: null },
      { pipeline: "b", lag: 4 },
    ]);
    expect([...b]).toEqual([
      ["a", 15],
      ["b", null],
    ]);
  });

  it("reads its policy from the config, and refuses a maximum below the minimum", () => {
    const cfg = parseConfig({ autoscale: { recordsPerWorker: 5_000, maxWorkers: 4, scaleUpAfter: "1m" } });
    expect(scalingPolicy(cfg.autoscale)).toEqual({
      recordsPerWorker: 5_000,
      minWorkers: 1,
      maxWorkers: 4,
      scaleUpAfterMs: 60_000,
      scaleDownAfterMs: 300_000,
    });
    expect(() => parseConfig({ autoscale: { minWorkers: 5, maxWorkers: 2 } })).toThrow(/maxWorkers/);
  });
});
