import { describe, expect, it } from "vitest";
import { LoopTurns } from "../../shared/nats/loop-turns.js";

/** Counts iterations of the event loop: its immediate runs first in every check phase. */
function loopCounter(): { readonly iteration: number; stop(): void } {
  let iteration = 0;
  let running = true;
  const tick = (): void => {
    iteration++;
    if (running) setImmediate(tick);
  };
  setImmediate(tick);
  return {
    get iteration() {
      return iteration;
    },
    stop() {
      running = false;
    },
  };
}

describe("LoopTurns", () => {
  it("lets waiters go in order, as many per iteration as the budget allows", async () => {
    let now = 0;
    const turns = new LoopTurns({ budgetMs: 20, now: () => now });
    const loop = loopCounter();
    const ran: Array<{ waiter: number; iteration: number }> = [];
    await Promise.all(
      Array.from({ length: 10 }, async (_, waiter) => {
        await turns.take();
        ran.push({ waiter, iteration: loop.iteration });
        now += 8; // each batch takes 8 ms of the slice
      }),
    );
    loop.stop();
    expect(ran.map((r) => r.waiter)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // 0, 8 and 16 ms are within a 20 ms budget, 24 ms is not: three per iteration, each group
    // in a later iteration than the one before.
    const sizes = new Map<number, number>();
    for (const r of ran) sizes.set(r.iteration, (sizes.get(r.iteration) ?? 0) + 1);
    expect([...sizes.values()]).toEqual([3, 3, 3, 1]);
    const iterations = [...sizes.keys()];
    for (let i = 1; i < iterations.length; i++) expect(iterations[i]).toBeGreaterThan(iterations[i - 1]!);
    expect(turns.queued).toBe(0);
  });

  it("lets every waiter go in one iteration when their work fits the budget", async () => {
    const turns = new LoopTurns({ budgetMs: 20, now: () => 0 });
    const loop = loopCounter();
    const iterations: number[] = [];
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        await turns.take();
        iterations.push(loop.iteration);
      }),
    );
    loop.stop();
    expect(new Set(iterations).size).toBe(1);
  });

  it("never lets a waiter go in the macrotask that asked", async () => {
    const turns = new LoopTurns({ budgetMs: 20, now: () => 0 });
    let released = false;
    const taken = turns.take().then(() => {
      released = true;
    });
    await Promise.resolve();
    await Promise.resolve();
    expect(released).toBe(false);
    await taken;
    expect(released).toBe(true);
  });

  it("runs a due timer between two slices of busy batches", async () => {
    // Real time: ten batches of 5 ms of CPU each would hold the loop for 50 ms in one
    // macrotask; with a 12 ms budget a timer due meanwhile runs after the first slice.
    const turns = new LoopTurns({ budgetMs: 12 });
    let batchesBeforeTimer = -1;
    let batches = 0;
    setTimeout(() => {
      batchesBeforeTimer = batches;
    }, 0);
    await Promise.all(
      Array.from({ length: 10 }, async () => {
        await turns.take();
        const until = performance.now() + 5;
        while (performance.now() < until);
        batches++;
      }),
    );
    expect(batchesBeforeTimer).toBeGreaterThan(0);
    expect(batchesBeforeTimer).toBeLessThan(10);
  });
});
