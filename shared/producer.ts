/**
 * The producer library: pipelined JetStream publishing. Records go out as core publishes with a
 * reply subject under one inbox subscription, and PubAcks are matched to records by that
 * subject: no per-record request, promise or timer, which is where `js.publish()` spends its
 * time. At most `window` records await their PubAck (a full window blocks `send`:
 * backpressure). One sweeper re-sends a record whose PubAck is overdue, with the same
 * `Nats-Msg-Id`, so the stream's duplicate window turns a re-send of a publish that did land
 * into a no-op; after `retries` re-sends the record is reported `timeout` (indeterminate).
 */
import {
  createInbox,
  type Msg,
  type NatsConnection,
  headers as natsHeaders,
  type Subscription,
} from "@nats-io/transport-node";
import { Headers, ingestSubject } from "./wire.js";

export interface ProducerOptions {
  /** Max records awaiting their PubAck. */
  window: number;
  /** Re-sends of a record whose PubAck is overdue, after the first send. */
  retries: number;
  /** How long a PubAck may take before the record is sent again, ms. */
  timeoutMs: number;
}

export type PublishStatus = "acked" | "failed" | "timeout";

export interface PublishResult {
  id: string;
  status: PublishStatus;
  /** Stream sequence when acked. */
  seq?: number;
  duplicate?: boolean;
  error?: string;
}

export interface OutgoingRecord {
  id: string;
  key: string;
  data: Uint8Array;
  contentType?: string;
}

interface Pending {
  record: OutgoingRecord;
  onResult: (r: PublishResult) => void;
  sentAt: number;
  sends: number;
}

const dec = new TextDecoder();

export const defaultProducerOptions: ProducerOptions = { window: 2048, retries: 5, timeoutMs: 3_000 };

export class Producer {
  private readonly inbox = createInbox();
  private readonly sub: Subscription;
  private readonly pending = new Map<string, Pending>();
  private readonly waiters: Array<() => void> = [];
  private readonly drained: Array<() => void> = [];
  private readonly sweeper: ReturnType<typeof setInterval>;
  private next = 0;
  private closed = false;

  constructor(
    private readonly nc: NatsConnection,
    private readonly pipeline: string,
    private readonly opts: ProducerOptions = defaultProducerOptions,
  ) {
    this.sub = nc.subscribe(`${this.inbox}.*`, { callback: (err, m) => (err ? undefined : this.onAck(m)) });
    this.sweeper = setInterval(() => this.sweep(), Math.max(50, Math.min(500, opts.timeoutMs / 4)));
    this.sweeper.unref?.();
  }

  /** Resolves once the record is sent (the window had room); `onResult` reports its PubAck. */
  async send(r: OutgoingRecord, onResult: (res: PublishResult) => void): Promise<void> {
    while (this.pending.size >= this.opts.window) {
      await new Promise<void>((res) => this.waiters.push(res));
    }
    const token = (this.next++).toString(36);
    this.pending.set(token, { record: r, onResult, sentAt: 0, sends: 0 });
    this.transmit(token);
  }

  private transmit(token: string): void {
    const p = this.pending.get(token);
    if (!p || this.closed) return;
    const h = natsHeaders();
    h.set(Headers.msgId, p.record.id);
    if (p.record.contentType) h.set(Headers.contentType, p.record.contentType);
    p.sentAt = Date.now();
    p.sends++;
    try {
      this.nc.publish(ingestSubject(this.pipeline, p.record.key), p.record.data, {
        headers: h,
        reply: `${this.inbox}.${token}`,
      });
    } catch {
      // Connection closing or reconnecting: the sweeper sends it again.
    }
  }

  private onAck(m: Msg): void {
    const token = m.subject.slice(this.inbox.length + 1);
    const p = this.pending.get(token);
    if (!p) return; // the ack of an earlier send of a record already settled
    if (m.headers?.hasError) {
      // 503: no stream took the subject (yet); the sweeper re-sends until retries run out.
      return;
    }
    let ack: { seq?: number; duplicate?: boolean; error?: { code?: number; description?: string } };
    try {
      ack = JSON.parse(dec.decode(m.data));
    } catch {
      return;
    }
    if (ack.error) {
      // Only a stream that is unavailable (503) may succeed later; anything else is final.
      if (ack.error.code === 503) return;
      this.settle(token, p, {
        id: p.record.id,
        status: "failed",
        error: ack.error.description ?? "rejected",
      });
      return;
    }
    this.settle(token, p, {
      id: p.record.id,
      status: "acked",
      ...(ack.seq === undefined ? {} : { seq: ack.seq }),
      ...(ack.duplicate ? { duplicate: true } : {}),
    });
  }

  private settle(token: string, p: Pending, r: PublishResult): void {
    this.pending.delete(token);
    p.onResult(r);
    this.waiters.shift()?.();
    if (this.pending.size === 0) for (const d of this.drained.splice(0)) d();
  }

  private sweep(): void {
    const now = Date.now();
    for (const [token, p] of this.pending) {
      if (now - p.sentAt < this.opts.timeoutMs) continue;
      if (p.sends > this.opts.retries) {
        // Every send went unanswered: it may or may not have landed.
        this.settle(token, p, { id: p.record.id, status: "timeout", error: "no PubAck" });
      } else {
        this.transmit(token);
      }
    }
  }

  /** Waits for every outstanding record's PubAck (or its timeout). */
  async flush(): Promise<void> {
    if (this.pending.size === 0) return;
    await new Promise<void>((res) => this.drained.push(res));
  }

  /** Flushes, then stops listening. Idempotent. */
  async close(): Promise<void> {
    await this.flush();
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweeper);
    this.sub.unsubscribe();
  }
}
