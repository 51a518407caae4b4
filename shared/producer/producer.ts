/**
 * The producer library: pipelined JetStream publishing. Records go out as core publishes with a
 * reply subject under one inbox subscription, and PubAcks are matched to records by that
 * subject: no per-record request, promise or timer, which is where `js.publish()` spends its
 * time. Publishes made in one synchronous run share one socket write: `offer` never yields,
 * so a loop that only awaits `ready()` when the window is full writes in large chunks.
 *
 * Backpressure: at most `window` records await their PubAck. When the stream answers 503
 * (no leader, not yet elected), the window halves and the record is sent again after a short
 * backoff; every PubAck grows the window back by one (AIMD). One sweeper re-sends a record
 * whose PubAck is overdue, with the same `Nats-Msg-Id`, so the stream's duplicate window turns
 * a re-send of a publish that did land into a no-op; after `retries` re-sends the record is
 * reported `timeout` (indeterminate). Confirmation is per record (`onResult`) or per batch
 * (`publishBatch`).
 *
 * Tracing: every record gets a PRODUCER span (`send ingest.P.*`) from its send to its PubAck,
 * child of the caller's active span; when that span is recording, its W3C `traceparent` (and
 * `tracestate`) go into the record's NATS headers, so the worker's batch span can link to it.
 * Unsampled and untraced records carry no extra header.
 */
import {
  createInbox,
  type Msg,
  MsgHdrsImpl,
  type NatsConnection,
  type Subscription,
} from "@nats-io/transport-node";
import { type Span, SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { ErrorCode } from "../contract/errors.js";
import {
  TelemetryAttributes as A,
  MESSAGING_SYSTEM,
  MessagingOperation,
  messagingSpanName,
  SpanNames,
} from "../telemetry/attributes.js";
import { traceHeadersOf } from "../telemetry/propagation.js";

export { connectForPublishing, connectNearStream } from "../adapters/nats/connection.js";

import { Headers, ingestSubject } from "../contract/wire.js";
import { getTracer } from "../telemetry/tracing.js";

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
  /** The stream that acknowledged the record (its shard's stream), when acked. */
  stream?: string;
  /** Sequence in that stream, when acked. */
  seq?: number;
  duplicate?: boolean;
  error?: string;
  /** Why a record was refused before it was sent (`failed` only); absent for broker rejections. */
  code?: ErrorCode;
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
  /** Set after a 503: the sweeper re-sends at this time (ms) instead of after `timeoutMs`. */
  retryAt: number;
  /** The record's publish span (a no-op one when tracing is off). */
  span: Span;
  /** traceparent/tracestate to send with the record; null when the span is not recording. */
  trace: Record<string, string> | null;
}

const dec = new TextDecoder();
const enc = new TextEncoder();

/**
 * A record's NATS headers, written once as their wire text. nats.js's `headers()` keeps a Map
 * and validates and canonicalises the key on every `set`; for the two to four headers of every
 * record that was a tenth of the producer's CPU. Publishing reads a header block only through
 * `encode()`, which this overrides; the keys are constants and `invalidRecord` has checked the
 * values, so nothing is left to validate.
 */
class RecordHeaders extends MsgHdrsImpl {
  constructor(private readonly wire: string) {
    super();
  }
  override encode(): Uint8Array {
    return enc.encode(this.wire);
  }
  override toString(): string {
    return this.wire;
  }
}

/** A character a header value cannot carry (CR, LF), or a key cannot as one subject token. */
const BAD_VALUE = /[\r\n]/;
const BAD_KEY = /[\s.*>]/;

/** Why `r` cannot be sent, or null: its id and key go into headers and the key into the subject. */
function invalidRecord(r: OutgoingRecord): string | null {
  if (r.id.length === 0) return "record id is empty";
  if (BAD_VALUE.test(r.id)) return `record id ${JSON.stringify(r.id)} contains CR or LF`;
  if (r.key.length === 0) return `record ${r.id}: key is empty`;
  if (BAD_KEY.test(r.key))
    return `record ${r.id}: key ${JSON.stringify(r.key)} is not one subject token (no whitespace, '.', '*' or '>')`;
  if (r.contentType !== undefined && BAD_VALUE.test(r.contentType))
    return `record ${r.id}: content type contains CR or LF`;
  return null;
}

export const defaultProducerOptions: ProducerOptions = { window: 2048, retries: 5, timeoutMs: 3_000 };

export class Producer {
  private readonly inbox: string;
  private readonly sub: Subscription;
  private readonly pending = new Map<string, Pending>();
  private readonly waiters: Array<() => void> = [];
  private readonly drained: Array<() => void> = [];
  private readonly sweeper: ReturnType<typeof setInterval>;
  private next = 0;
  private closed = false;
  /** Records allowed in flight now: `window`, halved on each 503, +1 per PubAck. */
  private limit: number;
  private readonly spanName: string;
  private readonly destinationTemplate: string;

  constructor(
    private readonly nc: NatsConnection,
    private readonly pipeline: string,
    private readonly opts: ProducerOptions = defaultProducerOptions,
  ) {
    // Under the connection's inbox prefix: a producer user may read its own role's inbox only.
    this.inbox = createInbox((nc as { options?: { inboxPrefix?: string } }).options?.inboxPrefix);
    this.destinationTemplate = `ingest.${pipeline}.*`;
    this.spanName = messagingSpanName(SpanNames.publishPrefix, this.destinationTemplate);
    this.sub = nc.subscribe(`${this.inbox}.*`, { callback: (err, m) => (err ? undefined : this.onAck(m)) });
    this.limit = opts.window;
    this.sweeper = setInterval(() => this.sweep(), Math.max(20, Math.min(100, opts.timeoutMs / 4)));
    this.sweeper.unref?.();
  }

  /** Records sent and awaiting their PubAck. */
  get inFlight(): number {
    return this.pending.size;
  }

  /**
   * Sends the record now if the window has room and returns true; false means the window is
   * full: wait for `ready()` and offer it again. Never yields, so a synchronous run of offers
   * goes out in one socket write.
   */
  offer(r: OutgoingRecord, onResult: (res: PublishResult) => void): boolean {
    if (this.pending.size >= this.limit) return false;
    this.start(r, onResult);
    return true;
  }

  /** Resolves once the window has room for another record. */
  ready(): Promise<void> {
    if (this.pending.size < this.limit) return Promise.resolve();
    return new Promise<void>((res) => this.waiters.push(res));
  }

  /** Resolves once the record is sent (the window had room); `onResult` reports its PubAck. */
  async send(r: OutgoingRecord, onResult: (res: PublishResult) => void): Promise<void> {
    while (!this.offer(r, onResult)) await this.ready();
  }

  /**
   * Sends every record (waiting for room as needed) and resolves with their results, in
   * order, once each has its PubAck, failure or timeout: confirmation per batch.
   */
  async publishBatch(records: readonly OutgoingRecord[]): Promise<PublishResult[]> {
    const results: PublishResult[] = new Array(records.length);
    let left = records.length;
    let done: () => void = () => undefined;
    const all = new Promise<void>((res) => {
      done = res;
    });
    if (left === 0) return results;
    for (let i = 0; i < records.length; i++) {
      const onResult = (res: PublishResult): void => {
        results[i] = res;
        if (--left === 0) done();
      };
      while (!this.offer(records[i]!, onResult)) await this.ready();
    }
    await all;
    return results;
  }

  private start(r: OutgoingRecord, onResult: (res: PublishResult) => void): void {
    if (this.closed) {
      onResult({ id: r.id, status: "failed", error: "the producer is closed", code: ErrorCode.Unavailable });
      return;
    }
    const invalid = invalidRecord(r);
    if (invalid !== null) {
      // Nothing a re-send could fix: refused now, never sent, never a silent time-out.
      onResult({ id: r.id, status: "failed", error: invalid, code: ErrorCode.InvalidRecord });
      return;
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
    this.pending.set(token, { record: r, onResult, sentAt: 0, sends: 0, retryAt: 0, span, trace });
    this.transmit(token);
  }

  private transmit(token: string): void {
    const p = this.pending.get(token);
    if (!p || this.closed) return;
    // The key travels in the subject (`ingest.P.<key>`), as any NATS client would send it.
    let wire = `NATS/1.0\r\n${Headers.msgId}: ${p.record.id}\r\n`;
    if (p.record.contentType) wire += `${Headers.contentType}: ${p.record.contentType}\r\n`;
    if (p.trace) for (const k in p.trace) wire += `${k}: ${p.trace[k]}\r\n`;
    const h = new RecordHeaders(`${wire}\r\n`);
    p.sentAt = Date.now();
    p.retryAt = 0;
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
      // 503 no responders: no stream took the subject (yet). Back off and send again.
      this.backOff(p);
      return;
    }
    let ack: {
      stream?: string;
      seq?: number;
      duplicate?: boolean;
      error?: { code?: number; description?: string };
    };
    try {
      ack = JSON.parse(dec.decode(m.data));
    } catch {
      return;
    }
    if (ack.error) {
      // Only a stream that is unavailable (503) may succeed later; anything else is final.
      if (ack.error.code === 503) {
        this.backOff(p);
        return;
      }
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
      ...(ack.stream === undefined ? {} : { stream: ack.stream }),
      ...(ack.seq === undefined ? {} : { seq: ack.seq }),
      ...(ack.duplicate ? { duplicate: true } : {}),
    });
  }

  /** The stream is unavailable: halve the window, re-send this record after a backoff. */
  private backOff(p: Pending): void {
    this.limit = Math.max(1, Math.floor(this.limit / 2));
    if (p.sends > this.opts.retries) return; // the sweeper reports it as timed out
    p.retryAt = Date.now() + Math.min(this.opts.timeoutMs, 25 * 2 ** p.sends);
  }

  private settle(token: string, p: Pending, r: PublishResult): void {
    this.pending.delete(token);
    if (r.status === "acked" && this.limit < this.opts.window) this.limit++;
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
    while (this.waiters.length > 0 && this.pending.size < this.limit) this.waiters.shift()!();
    if (this.pending.size === 0) for (const d of this.drained.splice(0)) d();
  }

  private sweep(): void {
    const now = Date.now();
    for (const [token, p] of this.pending) {
      if (p.retryAt > 0 && now >= p.retryAt) {
        this.transmit(token);
        continue;
      }
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
    this.stop();
  }

  /**
   * Gives up on every outstanding record now, for a caller that cannot wait out the re-sends
   * (a load the user interrupted twice, a cluster that stopped answering): each is reported
   * `timeout`, since the stream may have stored it or may not, and the producer stops. A
   * record offered afterwards fails at once. Idempotent.
   */
  abandon(reason: string): void {
    this.stop();
    for (const [token, p] of [...this.pending])
      this.settle(token, p, { id: p.record.id, status: "timeout", error: reason });
  }

  private stop(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweeper);
    this.sub.unsubscribe();
  }
}
