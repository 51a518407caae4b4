import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { type KeepAliveTiming, keepAliveAction } from "../../shared/core/keep-alive.js";

const T: KeepAliveTiming = { heartbeatMs: 200, stallLimitMs: 3000 };

/** Plays a loop that beats at `beats` (ms) and a thread that checks every 20 ms until `until`. */
function play(beats: number[], until: number, timing = T): number[] {
  const clock = { lastBeatAt: 0, lastKeepAliveAt: 0 };
  const sent: number[] = [];
  const queue = [...beats];
  for (let now = 0; now <= until; now += 20) {
    while (queue.length > 0 && queue[0]! <= now) clock.lastBeatAt = queue.shift()!;
    const a = keepAliveAction(clock, now, timing);
    if (a.type === "send") {
      clock.lastKeepAliveAt = now;
      sent.push(now);
    }
  }
  return sent;
}

describe("keepAliveAction", () => {
  it("stays quiet while the loop beats on time, even with jitter under half an interval", () => {
    expect(play([0, 200, 420, 600, 880, 1000, 1200], 1400)).toEqual([]);
  });

  it("re-sends once a beat is missed, every interval, until the loop beats again", () => {
    // Beats at 0 and 200, then the loop stalls until 1500.
    expect(play([0, 200, 1500, 1700], 1800)).toEqual([520, 720, 920, 1120, 1320]);
  });

  it("stops at the stall limit: a loop silent that long is treated as dead", () => {
    const sent = play([0], 5000, { heartbeatMs: 200, stallLimitMs: 1000 });
    expect(sent).toEqual([320, 520, 720, 920]);
    expect(
      keepAliveAction({ lastBeatAt: 0, lastKeepAliveAt: 920 }, 1020, {
        heartbeatMs: 200,
        stallLimitMs: 1000,
      }),
    ).toEqual({
      type: "expired",
      stalledMs: 1020,
    });
  });

  it("never leaves the coordinator more than 1.5 intervals plus a check without a heartbeat, within the limit", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 2500 }), { minLength: 1, maxLength: 30 }), (gaps) => {
        const beats: number[] = [];
        let t = 0;
        for (const g of gaps) {
          t += g;
          beats.push(t);
        }
        const sent = play(beats, t);
        const all = [...beats, ...sent].sort((a, b) => a - b);
        for (let i = 1; i < all.length; i++) expect(all[i]! - all[i - 1]!).toBeLessThanOrEqual(300 + 20);
      }),
    );
  });
});
