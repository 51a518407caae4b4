/** The benchmark's end-to-end figure: the round with the median ratio, never the best one. */
import { describe, expect, it } from "vitest";
import { medianRound } from "../../nodes/bench/end-to-end.js";
import { rate } from "../../nodes/bench/publish-rates.js";

/** A round of `publish` and `e2e` records/s (1,000 records each). */
const r = (publish: number, e2e: number) => ({
  publish: rate(1_000, 1_000_000 / publish),
  e2e: rate(1_000, 1_000_000 / e2e),
});

describe("medianRound", () => {
  it("takes the middle ratio of three, whatever the order and the rates", () => {
    const rounds = [r(50_000, 25_000), r(40_000, 24_000), r(60_000, 24_000)];
    // Ratios 0.5, 0.6, 0.4: the middle one is the first round's, not the fastest end to end.
    expect(medianRound(rounds)).toBe(rounds[0]);
    expect(medianRound([rounds[2]!, rounds[1]!, rounds[0]!])).toBe(rounds[0]);
  });

  it("takes the lower of two middles, so two rounds give the worse", () => {
    const rounds = [r(40_000, 24_000), r(60_000, 24_000)];
    expect(medianRound(rounds)).toBe(rounds[1]);
  });

  it("refuses no rounds", () => {
    expect(() => medianRound([])).toThrow("no rounds");
  });
});
