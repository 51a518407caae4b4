/**
 * Record payloads: CBOR map by default, JSON when `Content-Type: application/json`. Bad input
 * never throws: it returns a typed rejection that the worker dead-letters.
 */
import { addExtension, decode as cborDecode, encode as cborEncode } from "cbor-x";
import { ErrorCode, SluiceError } from "./errors.js";
import type { RecordValue, SourceMessage } from "./ports.js";
import { fnv1a32, fnv1a32Bytes, Headers } from "./wire.js";

/** Why a record's bytes were refused; the worker dead-letters it with `code` and `message`. */
export type Rejection = { ok: false; code: ErrorCode; message: string };

const textDecoder = new TextDecoder("utf-8", { fatal: true });

/**
 * Largest CBOR bignum (tags 2 and 3) a record may hold, bytes of magnitude: 1 024 bits, 309
 * decimal digits, beyond every fixed-width integer type. Rendering a bigint as decimal (JSON, a
 * rule's message) costs superlinear time in its size, about 1.6 s for 1 MiB: one record may
 * not hold the event loop anywhere near a lease's TTL (800 ms by default).
 */
export const MAX_BIGNUM_BYTES = 128;

/**
 * A bignum's value, in time linear in its size (cbor-x's own decoder shifts once per byte,
 * quadratic: minutes for 1 MiB). Its content must be a byte string (RFC 8949 section 3.4.3).
 */
function bignum(content: unknown, negative: boolean): bigint {
  if (!(content instanceof Uint8Array))
    throw new Error(`bignum (tag ${negative ? 3 : 2}) is not a byte string`);
  if (content.length > MAX_BIGNUM_BYTES)
    throw new Error(`bignum of ${content.length} bytes, more than ${MAX_BIGNUM_BYTES}`);
  const hex = Buffer.from(content.buffer, content.byteOffset, content.length).toString("hex");
  const magnitude = hex === "" ? 0n : BigInt(`0x${hex}`);
  return negative ? -1n - magnitude : magnitude;
}

/**
 * Refused: value sharing (tags 28 and 29) and packed values (tag 51) let a few bytes reference
 * one value many times over, as a cycle or a DAG whose walk and JSON rendering double per level
 * (2^40 values from 250 bytes). A record is a tree: each value is written where it is used.
 */
function sharedValues(tag: number): () => never {
  return () => {
    throw new Error(`CBOR tag ${tag} (shared or packed values) is not accepted in a record`);
  };
}

/**
 * Replaces cbor-x's decoding of `tag`, for every decode in the process (its tag table is
 * global). Decode only: no `Class`, so cbor-x registers no encoder, which its typings require.
 */
const decodeTag = (tag: number, decode: (content: unknown) => unknown): void =>
  addExtension({ tag, decode } as unknown as Parameters<typeof addExtension>[0]);
decodeTag(2, (content) => bignum(content, false));
decodeTag(3, (content) => bignum(content, true));
for (const tag of [28, 29, 51]) decodeTag(tag, sharedValues(tag));

/**
 * Deepest nesting a record may have, levels of maps and arrays (the record itself is level 1):
 * far beyond real records, and half of what cbor-x and `JSON.stringify` recurse through on a
 * default stack (about 2 000). Without a fixed bound, whether a record is accepted would depend
 * on the stack its worker has left, and a redelivery could be decided differently.
 */
export const MAX_DEPTH = 1_000;

/** Whether `v` nests deeper than `limit` levels; recurses at most `limit` + 1 deep. */
function deeperThan(v: unknown, limit: number): boolean {
  if (typeof v !== "object" || v === null || ArrayBuffer.isView(v)) return false;
  if (limit === 0) return true;
  if (v instanceof Map) {
    for (const [k, x] of v) if (deeperThan(k, limit - 1) || deeperThan(x, limit - 1)) return true;
    return false;
  }
  for (const x of Array.isArray(v) || v instanceof Set ? v : Object.values(v))
    if (deeperThan(x, limit - 1)) return true;
  return false;
}

/**
 * True when plain `JSON.stringify` renders the value faithfully: only plain objects, arrays,
 * strings, numbers, booleans and null. Checking first is several times cheaper than a
 * replacer, which costs a call per key on every record.
 */
function isPlainJson(v: unknown, depth = 0): boolean {
  if (v === null || typeof v !== "object") return typeof v !== "bigint" && typeof v !== "undefined";
  if (depth > 32) return false;
  if (Array.isArray(v)) {
    for (const x of v) if (!isPlainJson(x, depth + 1)) return false;
    return true;
  }
  if (Object.getPrototypeOf(v) !== Object.prototype) return false;
  for (const k in v) if (!isPlainJson((v as Record<string, unknown>)[k], depth + 1)) return false;
  return true;
}

/** JSON text of a decoded value; bytes become base64, bigints strings, Maps objects. */
export function toJsonText(value: unknown): string {
  if (isPlainJson(value)) return JSON.stringify(value);
  return JSON.stringify(value, (_k, v: unknown) => {
    if (typeof v === "bigint") return v.toString();
    if (v instanceof Uint8Array) return { $base64: Buffer.from(v).toString("base64") };
    if (v instanceof Map) return Object.fromEntries(v);
    return v;
  });
}

function isPlainMap(v: unknown): boolean {
  return (
    (typeof v === "object" && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array)) ||
    v instanceof Map
  );
}

/**
 * What identifies a stored message whatever sequence it has: its record id, or, for a message
 * without one (it is dead-lettered), a hash of its subject and bytes.
 */
export function messageFingerprint(msg: SourceMessage): string {
  const id = headerOf(msg, Headers.msgId)?.trim();
  if (id) return id;
  return `#${fnv1a32(msg.subject).toString(16)}.${fnv1a32Bytes(msg.data).toString(16)}`;
}

/**
 * A JSON content type, parameters allowed. ASCII case-insensitive matches exactly what
 * lower-casing the value first would: the only other characters whose lower case starts with
 * an ASCII letter are U+212A (k, not in the pattern) and U+0130 (i followed by U+0307, which
 * then fails the next letter).
 */
export const jsonContentType = /^application\/json/i;

/** One header's first value, through the message's fast lookup when it has one. */
export const headerOf = (msg: SourceMessage, name: string): string | undefined =>
  msg.header ? msg.header(name) : msg.headers[name];

/** The map a record's bytes hold, or why they hold none. */
function decodeMap(data: Uint8Array, json: boolean): { ok: true; value: unknown } | Rejection {
  let value: unknown;
  try {
    value = json ? JSON.parse(textDecoder.decode(data)) : cborDecode(data);
  } catch (err) {
    return {
      ok: false,
      code: ErrorCode.UndecodablePayload,
      message: `${json ? "JSON" : "CBOR"} decode failed: ${(err as Error).message}`,
    };
  }
  if (!isPlainMap(value)) {
    return {
      ok: false,
      code: ErrorCode.NotAMap,
      message: `payload is ${value === null ? "null" : typeof value}, not a map`,
    };
  }
  return { ok: true, value };
}

/** The JSON text of `value`, or why it has none. */
function renderMap(value: unknown): { ok: true; text: string } | Rejection {
  try {
    return { ok: true, text: toJsonText(value) };
  } catch (err) {
    return {
      ok: false,
      code: ErrorCode.UndecodablePayload,
      message: `not representable as JSON: ${(err as Error).message}`,
    };
  }
}

/**
 * The map a record's bytes hold, checked to render as JSON (`payloadJson`), or why they hold
 * none. Rendering is skipped when plain `JSON.stringify` cannot fail on the value
 * (`isPlainJson`), which is nearly always. A CBOR map with non-text keys becomes an object.
 */
export function decodePayload(data: Uint8Array, json: boolean): { ok: true; value: RecordValue } | Rejection {
  const decoded = decodeMap(data, json);
  if (!decoded.ok) return decoded;
  let value: unknown;
  try {
    value = decoded.value instanceof Map ? Object.fromEntries(decoded.value) : decoded.value;
  } catch (err) {
    // A key that is no property name: an object whose `toString` and `valueOf` are not
    // functions throws here, and a throw in the decode stage would fail the batch for good.
    return {
      ok: false,
      code: ErrorCode.UndecodablePayload,
      message: `map key is not a property name: ${(err as Error).message}`,
    };
  }
  // A plain value nests at most 33 levels (`isPlainJson`): only others can be too deep.
  if (isPlainJson(value)) return { ok: true, value: value as RecordValue };
  if (deeperThan(value, MAX_DEPTH))
    return {
      ok: false,
      code: ErrorCode.UndecodablePayload,
      message: `nested deeper than ${MAX_DEPTH} levels`,
    };
  const rendered = renderMap(value);
  return rendered.ok ? { ok: true, value: value as RecordValue } : rendered;
}

/**
 * A record's value as JSON text: what a sink that stores JSON writes, rendered in the sink
 * (see `SinkRow.value`). Throws (non-retryable) only for a value no decode stage checked.
 */
export function payloadJson(value: RecordValue): string {
  const rendered = renderMap(value);
  if (!rendered.ok) throw new SluiceError(rendered.code, rendered.message, { retryable: false });
  return rendered.text;
}

export function encodeRecord(value: Record<string, unknown>): Uint8Array {
  return cborEncode(value);
}
