/**
 * The producer library: pipelined JetStream publishing. Records go out as core publishes with a
 * reply subject under one inbox subscription, and PubAcks are matched to records by that
 * subject: no per-record request, promise or timer, which is where `js.publish()` spends its
 * time. At most `window` records await their PubAck (a full window blocks `send`:
 * backpressure). One sweeper re-sends a record whose PubAck is overdue, with the same
 * `Nats-Msg-Id`, so the stream's duplicate window turns a re-send of a publish that did land
 * into a no-op; after `retries` re-sends the record is reported `timeout` (indeterminate).
 *
 * Tracing: every record gets a PRODUCER span (`send ingest.P.*`) from its send to its PubAck,
 * child of the caller's active span; when that span is recording, its W3C `traceparent` (and
 * `tracestate`) go into the record's NATS headers, so the worker's batch span can link to it.
 * Unsampled and untraced records carry no extra header.
 */
import {
  createInbox,
  type Msg,
  type NatsConnection,
  headers as natsHeaders,
  type Subscription,
} from "@nats-io/transport-node";
import { type Span, SpanKind, SpanStatusCode } from "@opentelemetry/api";
import {
  TelemetryAttributes as A,
  MESSAGING_SYSTEM,
  MessagingOperation,
  messagingSpanName,
  SpanNames,
} from "./telemetry/attributes.js";
import { traceHeadersOf } from "./telemetry/propagation.js";
import { getTracer } from "./telemetry/tracing.js";
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
  /** The record's publish span (a no-op one when tracing is off). */
  span: Span;
  /** traceparent/tracestate to send with the record; null when the span is not recording. */
  trace: Record<string, string> | null;
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
  private readonly spanName: string;
  private readonly destinationTemplate: string;

  constructor(
    private readonly nc: NatsConnection,
    private readonly pipeline: string,
    private readonly opts: ProducerOptions = defaultProducerOptions,
  ) {
    this.destinationTemplate = `ingest.${pipeline}.*`;
    this.spanName = messagingSpanName(SpanNames.publishPrefix, this.destinationTemplate);
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
    const span = getTracer().startSpan(this.spanName, { kind: SpanKind.PRODUCER });
    let trace: Record<string, string> | null = null;
    if (span.isRecording()) {
      // Attributes only for a recorded span: an untraced publish allocates nothing for them.
      span.setAttributes({
        [A.messagingSystem]: MESSAGING_SYSTEM,
        [A.messagingOperationType]: MessagingOperation.send,
        [A.messagingOperationName]: "publish",
        [A.messagingDestinationName]: ingestSubject(this.pipeline, r.key),
        [A.messagingDestinationTemplate]: this.destinationTemplate,
        [A.messagingMessageId]: r.id,
        [A.messagingMessageBodySize]: r.data.length,
        [A.pipeline]: this.pipeline,
      });
      trace = traceHeadersOf(span);
    }
    this.pending.set(token, { record: r, onResult, sentAt: 0, sends: 0, span, trace });
    this.transmit(token);
  }

  private transmit(token: string): void {
    const p = this.pending.get(token);
    if (!p || this.closed) return;
    const h = natsHeaders();
    h.set(Headers.msgId, p.record.id);
    if (p.record.contentType) h.set(Headers.contentType, p.record.contentType);
    if (p.trace) for (const k in p.trace) h.set(k, p.trace[k]!);
    p.sentAt = Date.now();
    if (p.sends > 0) p.span.addEvent("resend", { [A.resends]: p.sends });
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
    if (p.span.isRecording()) {
      p.span.setAttributes({
        [A.publishStatus]: r.status,
        [A.resends]: p.sends - 1,
        ...(r.seq === undefined ? {} : { [A.sourceSeq]: r.seq }),
        ...(r.duplicate ? { [A.publishDuplicate]: true } : {}),
      });
      if (r.status !== "acked")
        p.span.setStatus({ code: SpanStatusCode.ERROR, message: r.error ?? r.status });
    }
    p.span.end();
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
