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
