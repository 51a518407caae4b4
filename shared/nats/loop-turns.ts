/**
 * Slices of the event loop for shard feeds.
 *
 * One socket read can carry the replies and deliveries of many shards at once. Each of them
 * resolves a promise, and each shard's continuation (decode a batch, send its commit) then
 * runs in the same macrotask's microtasks, one after the other: with 64 shards on a
 * CPU-starved worker that held the event loop for up to 0.7 s, so heartbeats and lease
 * renewals waited behind it. A feed takes a turn before it hands records out. Turns are let go
 * one at a time in the loop's check phase, each after the work of the one before has run, while
 * the slice is within `budgetMs` of its start; the rest wait for a later iteration, after its
 * timers and socket reads. A stall is then bounded by the budget plus one batch, not one batch
 * per shard, and a light load still runs every shard's batch in the same iteration.
 *
 * Invariants: waiters go in the order they asked (FIFO, so no shard starves); a slice lasts one
 * check phase; an idle instance schedules nothing.
 */
export interface LoopTurnsOptions {
  /** Wall time a slice may run batches before the rest wait for a later iteration, ms (> 0). */
  budgetMs: number;
  /** Monotonic clock, ms. */
  now?: () => number;
}

export class LoopTurns {
  private readonly waiting: Array<() => void> = [];
  /** When the current slice started; undefined between slices. */
  private sliceStart: number | undefined;
  private readonly now: () => number;

  constructor(private readonly opts: LoopTurnsOptions) {
    this.now = opts.now ?? (() => performance.now());
  }

  /**
   * Resolves when this caller may run one batch: in the loop's next check phase while the
   * slice has budget left, else in a later iteration's. Never at once: the shards woken by one
   * socket read run their continuations in one microtask queue, where no budget check could
   * see the work of the shards before it.
   */
  take(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.waiting.push(resolve);
      setImmediate(() => this.release());
    });
  }

  /** Waiters not let go yet. */
  get queued(): number {
    return this.waiting.length;
  }

  /** True when a batch may run in the current slice, starting one if none runs. */
  private withinSlice(): boolean {
    const now = this.now();
    if (this.sliceStart === undefined) {
      this.sliceStart = now;
      // Started in a check phase: it ends in the next iteration's, before the releases that
      // wait there (immediates run in the order they were scheduled).
      setImmediate(() => {
        this.sliceStart = undefined;
      });
      return true;
    }
    return now - this.sliceStart < this.opts.budgetMs;
  }

  /**
   * Runs in a check phase, once per waiter queued. Between two immediates the microtasks of the
   * waiter let go before run to completion, so the budget check sees their work.
   */
  private release(): void {
    if (this.waiting.length === 0) return;
    if (this.withinSlice()) this.waiting.shift()?.();
    // Over budget: an immediate scheduled from an immediate runs on the next iteration.
    else setImmediate(() => this.release());
  }
}

/**
 * The turns every shard feed of this process shares: 20 ms keeps a loaded worker's loop
 * answering its 200 ms heartbeat timer within a fraction of an interval.
 */
export const shardFeedTurns = new LoopTurns({ budgetMs: 20 });
