/**
 * A JetStream message as a `SourceMessage`, built for every record the worker reads: only what
 * the hot path needs is computed up front, and without nats.js's general parsers where they
 * cost a measurable share of the worker's CPU.
 */
import type { JsMsg } from "@nats-io/jetstream";
import type { MsgHdrs } from "@nats-io/transport-node";
import type { SourceMessage } from "../../contract/ports.js";
import { Headers } from "../../contract/wire.js";
import { scanHeaderValues } from "./raw-headers.js";

/**
 * The headers the stages read from every record, looked up together in one pass: the decode
 * stage's three, and the schema stage's writer schema id and a replay's record id.
 */
const recordHeaderNames: readonly string[] = [
  Headers.msgId,
  Headers.key,
  Headers.contentType,
  Headers.schemaId,
  Headers.recordId,
];
const noRecordHeaders: ReadonlyArray<string | undefined> = recordHeaderNames.map(() => undefined);

/**
 * The part of nats.js's core `MsgImpl` (what `JsMsgImpl.msg` holds) that keeps a message's
 * header block and ack subject undecoded: `_rdata` is the header block followed by the payload,
 * `_msg.hdr` the block's length (-1 without headers), `_headers` the decoded map once `headers`
 * was read, `_msg.reply` the ack subject's bytes.
 * These are not public API (nats.js 3.x): every field is checked before use, and any other
 * shape falls back to the public `headers`, so a nats.js change costs speed, not correctness.
 */
interface RawMsg {
  _msg?: { hdr?: unknown; reply?: unknown };
  _rdata?: unknown;
  _headers?: unknown;
}

/**
 * `Nats-Msg-Id`, `Sluice-Key` and `Content-Type` of `token` (undefined when absent), as
 * `token.headers?.get(name)` returns them, read straight off the raw header block when it can
 * be (see `scanHeaderValues`).
 */
function recordHeaders(token: JsMsg): ReadonlyArray<string | undefined> {
  const raw = (token as { msg?: RawMsg }).msg;
  const hdr = raw?._msg?.hdr;
  const data = raw?._rdata;
  if (raw && raw._headers === undefined && typeof hdr === "number" && data instanceof Uint8Array) {
    if (hdr < 0) return noRecordHeaders;
    if (hdr <= data.length) {
      const found = scanHeaderValues(data, hdr, recordHeaderNames);
      if (found) return found;
    }
  }
  const h = token.headers;
  return h ? recordHeaderNames.map((name) => h.get(name)) : noRecordHeaders;
}

/** Positions of the first dots of an ack subject: shared scratch, as parsing is synchronous. */
const dots = new Int32Array(11);
const DOT = 46;
/** "$JS.ACK." */
const ackPrefix = [36, 74, 83, 46, 65, 67, 75, 46];

/** The decimal integer `s[a, b)`, or -1 unless it is 1 to 15 ASCII digits (exact in a double). */
function digitsAt(s: Uint8Array, a: number, b: number): number {
  if (b <= a || b - a > 15) return -1;
  let v = 0;
  for (let i = a; i < b; i++) {
    const d = s[i]! - 48;
    if (d < 0 || d > 9) return -1;
    v = v * 10 + d;
  }
  return v;
}

/** What the worker needs of a JetStream delivery's ack subject. */
export interface AckNumbers {
  streamSequence: number;
  deliverySequence: number;
  pending: number;
}

/**
 * Reads the stream sequence, delivery sequence and pending count of the ack subject `reply`
 * (its bytes) into `out`, with the same results as nats.js's `parseInfo` but without decoding
 * and splitting the subject into strings. The subject is "$JS.ACK.<stream>.<consumer>.
 * <deliveries>.<stream seq>.<delivery seq>.<timestamp>.<pending>" (9 tokens, what nats-server
 * sends), or with "<domain>.<account hash>" after "ACK" and more tokens at the end (11 or more).
 * Returns false for anything else, or a number that is not plain digits, so that the caller
 * lets `parseInfo` decide (it throws, or yields what `parseInt` makes of the token).
 */
export function readAckNumbers(reply: Uint8Array, out: AckNumbers): boolean {
  const first = ackTokens(reply);
  if (first < 0) return false;
  const streamSequence = digitsAt(reply, dots[first - 1]! + 1, dots[first]!);
  const deliverySequence = digitsAt(reply, dots[first]! + 1, dots[first + 1]!);
  // Pending is the last token of a 9-token subject.
  const pending = digitsAt(
    reply,
    dots[first + 2]! + 1,
    dotCount > first + 3 ? dots[first + 3]! : reply.length,
  );
  if (streamSequence < 0 || deliverySequence < 0 || pending < 0) return false;
  out.streamSequence = streamSequence;
  out.deliverySequence = deliverySequence;
  out.pending = pending;
  return true;
}

/**
 * The stream time of the ack subject `reply` in whole milliseconds (its nanosecond token without
 * the last six digits: exact, where a double of the nanoseconds is not), or -1 when the subject
 * is not one `readAckNumbers` reads or the token is not plain digits.
 */
export function readAckTimestampMs(reply: Uint8Array): number {
  const first = ackTokens(reply);
  if (first < 0) return -1;
  const a = dots[first + 1]! + 1;
  const b = dots[first + 2]!;
  if (b <= a) return -1;
  for (let i = a; i < b; i++) if (reply[i]! < 48 || reply[i]! > 57) return -1;
  return b - a <= 6 ? 0 : digitsAt(reply, a, b - 6);
}

/** Dots counted by the last `ackTokens`, and their offsets (the first 11) in `dots`. */
let dotCount = 0;

/**
 * Finds the dots of the ack subject `reply`: the index of its stream-sequence token (the delivery
 * sequence, the timestamp and pending follow it), or -1 when it is no ack subject.
 */
function ackTokens(reply: Uint8Array): number {
  const length = reply.length;
  if (length < ackPrefix.length) return -1;
  for (let i = 0; i < ackPrefix.length; i++) if (reply[i] !== ackPrefix[i]) return -1;
  let n = 0;
  for (let i = 0; i < length; i++) {
    if (reply[i] !== DOT) continue;
    if (n < dots.length) dots[n] = i;
    n++;
  }
  dotCount = n;
  const tokens = n + 1;
  return tokens === 9 ? 5 : tokens >= 11 ? 7 : -1;
}

const ackScratch: AckNumbers = { streamSequence: 0, deliverySequence: 0, pending: 0 };

/**
 * A JetStream message as a `SourceMessage`. `Nats-Msg-Id`, `Sluice-Key` and `Content-Type` are
 * read together on first use; other headers are looked up in the message's own header map, and
 * the plain-object copy is built only when asked for (dead letters).
 */
export class JetStreamSourceMessage implements SourceMessage {
  readonly seq: number;
  readonly deliverySeq: number;
  readonly pending: number;
  private copied: Record<string, string> | undefined;
  private known: ReadonlyArray<string | undefined> | undefined;

  constructor(readonly token: JsMsg) {
    // Read off the ack subject's bytes: decoding it to a string is needed only to ack, and only
    // the last message of a batch is acked.
    const reply = (token as { msg?: RawMsg }).msg?._msg?.reply;
    const info = reply instanceof Uint8Array && readAckNumbers(reply, ackScratch) ? ackScratch : token.info;
    this.seq = info.streamSequence;
    this.deliverySeq = info.deliverySequence;
    this.pending = info.pending;
  }

  get subject(): string {
    return this.token.subject;
  }

  get data(): Uint8Array {
    return this.token.data;
  }

  get timestampMs(): number {
    // Read off the ack subject's bytes like the sequences: nats.js's `info` splits it into strings.
    const reply = (this.token as { msg?: RawMsg }).msg?._msg?.reply;
    const ms = reply instanceof Uint8Array ? readAckTimestampMs(reply) : -1;
    return ms >= 0 ? ms : Math.floor(this.token.info.timestampNanos / 1e6);
  }

  /**
   * Why the header block could not be read (nats.js rejects a block with, e.g., a space in a
   * name), or undefined. Such a message reads as one without headers, so it is dead-lettered
   * with this reason instead of throwing in every owner's run and stalling the shard.
   */
  headerError: string | undefined;

  /** nats.js's header map, or undefined when there is none or it cannot be decoded. */
  private headerMap(): MsgHdrs | undefined {
    if (this.headerError !== undefined) return undefined;
    try {
      return this.token.headers;
    } catch (err) {
      this.headerError = (err as Error).message;
      return undefined;
    }
  }

  header(name: string): string | undefined {
    const i = recordHeaderNames.indexOf(name);
    if (i < 0) return this.headerMap()?.get(name) || undefined;
    if (!this.known) {
      try {
        this.known = recordHeaders(this.token);
      } catch (err) {
        this.headerError = (err as Error).message;
        this.known = noRecordHeaders;
      }
    }
    return this.known[i] || undefined;
  }

  get headers(): Record<string, string> {
    if (!this.copied) {
      const out: Record<string, string> = {};
      const h = this.headerMap();
      if (h) for (const [k, v] of h) out[k] = v[0] ?? "";
      this.copied = out;
    }
    return this.copied;
  }
}

export function toSourceMessage(m: JsMsg): SourceMessage {
  return new JetStreamSourceMessage(m);
}
