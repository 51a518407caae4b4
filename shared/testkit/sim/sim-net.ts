/**
 * The simulated network between nodes: per-message delay, and faults drawn from the seed:
 * loss, duplication, reordering, extra delay and partitions. Node-to-node messages travel
 * through the broker, so cutting a node off the broker also cuts it off every other node.
 */
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import type { Rng } from "./rng.js";
import type { SimLoop, SimNode } from "./sim-loop.js";

export const BROKER = "broker";
export const SINK = "sink";

export interface NetConditions {
  /** Probability a lossy message is dropped. */
  dropP: number;
  /** Probability a lossy message is delivered twice. */
  dupP: number;
  /** Extra delay added to every message, ms. */
  extraDelayMs: number;
  /** When true, messages of one link may overtake each other. */
  reorder: boolean;
  /** Extra delay of every message to the sink (a slow sink), ms. */
  sinkDelayMs: number;
}

export const calm = (): NetConditions => ({
  dropP: 0,
  dupP: 0,
  extraDelayMs: 0,
  reorder: false,
  sinkDelayMs: 0,
});

const pair = (a: string, b: string): string => (a < b ? `${a}|${b}` : `${b}|${a}`);

export class SimNet {
  conditions: NetConditions = calm();
  private readonly cuts = new Set<string>();
  private readonly lastOnLink = new Map<string, number>();

  constructor(
    private readonly loop: SimLoop,
    private readonly rng: Rng,
    /** Base one-way delay range, ms. */
    private readonly delay: [number, number] = [1, 4],
  ) {}

  cut(a: string, b: string): void {
    this.cuts.add(pair(a, b));
  }

  heal(a: string, b: string): void {
    this.cuts.delete(pair(a, b));
  }

  healAll(): void {
    this.cuts.clear();
    this.conditions = calm();
  }

  isCut(a: string, b: string): boolean {
    if (this.cuts.has(pair(a, b))) return true;
    const direct = a === BROKER || b === BROKER || a === SINK || b === SINK;
    return !direct && (this.cuts.has(pair(a, BROKER)) || this.cuts.has(pair(b, BROKER)));
  }

  private latency(to: string): number {
    const c = this.conditions;
    return this.rng.int(this.delay[0], this.delay[1]) + c.extraDelayMs + (to === SINK ? c.sinkDelayMs : 0);
  }

  /**
   * Sends one message. `lossy` messages suffer drops and duplicates (core NATS publishes,
   * requests); others model a resumable ordered stream (a KV watch) and only wait out cuts.
   */
  send(from: SimNode, to: SimNode, fn: () => void, lossy = true): void {
    const inc = to.incarnation;
    const fromInc = from.incarnation;
    if (!lossy) {
      this.sendReliable(from, fromInc, to, inc, fn);
      return;
    }
    if (this.isCut(from.id, to.id)) return;
    if (this.conditions.dropP > 0 && this.rng.float() < this.conditions.dropP) return;
    const at = this.arrival(from.id, to.id);
    this.loop.at(at, () => to.run(inc, fn));
    if (this.conditions.dupP > 0 && this.rng.float() < this.conditions.dupP) {
      this.loop.at(at + this.latency(to.id), () => to.run(inc, fn));
    }
  }

  private arrival(from: string, to: string): number {
    const at = this.loop.now + this.latency(to);
    if (this.conditions.reorder) return at;
    const link = `${from}>${to}`;
    const fifo = Math.max(at, this.lastOnLink.get(link) ?? 0);
    this.lastOnLink.set(link, fifo);
    return fifo;
  }

  private readonly reliableQueues = new Map<string, Array<() => void>>();

  private sendReliable(from: SimNode, fromInc: number, to: SimNode, toInc: number, fn: () => void): void {
    // Like an ordered consumer: in order, and after a cut everything queued arrives once the
    // link is back (the consumer resumes from its last sequence).
    const link = `${from.id}~${to.id}`;
    const q = this.reliableQueues.get(link) ?? [];
    this.reliableQueues.set(link, q);
    q.push(() => {
      if (from.incarnation !== fromInc || to.incarnation !== toInc) return;
      const at = this.arrival(link, to.id);
      this.loop.at(at, () => to.run(toInc, fn));
    });
    if (q.length === 1) this.flushReliable(link, from.id, to.id);
  }

  private flushReliable(link: string, from: string, to: string): void {
    const q = this.reliableQueues.get(link);
    if (!q || q.length === 0) return;
    if (this.isCut(from, to)) {
      this.loop.at(this.loop.now + 100, () => this.flushReliable(link, from, to));
      return;
    }
    for (const send of q.splice(0)) send();
  }

  /**
   * A request from `from` served by `server`: `handle` runs on the server when the request
   * arrives; its result (or error) travels back. Rejects with a retryable UNAVAILABLE after
   * `timeoutMs` on the requester's clock.
   */
  request<T>(from: SimNode, server: SimNode, handle: () => T, timeoutMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let done = false;
      const timer = from.setTimeout(() => {
        if (done) return;
        done = true;
        reject(
          new SluiceError(ErrorCode.Unavailable, `request to ${server.id} timed out`, { retryable: true }),
        );
      }, timeoutMs);
      this.send(from, server, () => {
        let out: { ok: true; v: T } | { ok: false; e: unknown };
        try {
          out = { ok: true, v: handle() };
        } catch (e) {
          out = { ok: false, e };
        }
        this.send(server, from, () => {
          if (done) return;
          done = true;
          from.clearTimeout(timer);
          if (out.ok) resolve(out.v);
          else reject(out.e);
        });
      });
    });
  }
}
