/**
 * Virtual time for the simulator. One event queue ordered by (time, insertion); after each
 * event every promise continuation it caused runs before the next event, so a run is a pure
 * function of the seed.
 */
import type { Scheduler } from "../../contract/ports.js";

interface Timer {
  at: number;
  order: number;
  fn: () => void;
}

export class SimLoop {
  now = 0;
  steps = 0;
  private heap: Timer[] = [];
  private order = 0;

  at(at: number, fn: () => void): void {
    const t: Timer = { at: Math.max(at, this.now), order: this.order++, fn };
    const h = this.heap;
    h.push(t);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!before(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  private pop(): Timer | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l]!, h[m]!)) m = l;
        if (r < h.length && before(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }

  get pending(): number {
    return this.heap.length;
  }

  /** Runs events up to and including time `until`, calling `afterStep` after each one settles. */
  async runUntil(until: number, afterStep?: () => void): Promise<void> {
    for (;;) {
      const next = this.heap[0];
      if (!next || next.at > until) break;
      this.pop();
      this.now = next.at;
      this.steps++;
      next.fn();
      await settle();
      afterStep?.();
    }
    this.now = until;
  }
}

const before = (a: Timer, b: Timer): boolean => a.at < b.at || (a.at === b.at && a.order < b.order);

/** Lets every queued promise continuation run. */
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

/**
 * A simulated process. Its callbacks run only while it is up; while paused they wait, in
 * order, for `resume`; a crash drops everything scheduled by the old incarnation.
 */
export class SimNode implements Scheduler {
  incarnation = 0;
  paused = false;
  up = true;
  private deferred: Array<() => void> = [];

  constructor(
    readonly id: string,
    readonly loop: SimLoop,
  ) {}

  now(): number {
    return this.loop.now;
  }

  /** Runs `fn` in this node's context if incarnation `inc` is still the live one. */
  run(inc: number, fn: () => void): void {
    if (!this.up || inc !== this.incarnation) return;
    if (this.paused) {
      this.deferred.push(() => this.run(inc, fn));
      return;
    }
    fn();
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const handle = { cancelled: false };
    const inc = this.incarnation;
    this.loop.at(this.loop.now + Math.max(0, ms), () =>
      this.run(inc, () => {
        if (!handle.cancelled) fn();
      }),
    );
    return handle;
  }

  clearTimeout(handle: unknown): void {
    if (handle && typeof handle === "object") (handle as { cancelled: boolean }).cancelled = true;
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    const d = this.deferred;
    this.deferred = [];
    for (const fn of d) this.loop.at(this.loop.now, fn);
  }

  crash(): void {
    this.incarnation++;
    this.paused = false;
    this.deferred = [];
    this.up = false;
  }

  restart(): void {
    this.up = true;
  }
}
