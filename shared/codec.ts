/**
 * Record decoding: CBOR map by default, JSON when `Content-Type: application/json`.
 * Bad input never throws: it returns a typed rejection that the worker dead-letters.
 */
import { decode as cborDecode, encode as cborEncode } from "cbor-x";
import { ErrorCode, SluiceError } from "./errors.js";
import type { SinkRow, SourceMessage } from "./ports.js";
import { fnv1a32, fnv1a32Bytes, Headers, shardOf } from "./wire.js";

/** Why a record's bytes were refused; the worker dead-letters it with `code` and `message`. */
export type Rejection = { ok: false; code: ErrorCode; message: string };

export type DecodeResult = { ok: true; row: SinkRow } | Rejection;

const textDecoder = new TextDecoder("utf-8", { fatal: true });

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
  const id = header(msg, Headers.msgId)?.trim();
  if (id) return id;
  return `#${fnv1a32(msg.subject).toString(16)}.${fnv1a32Bytes(msg.data).toString(16)}`;
}

/**
 * A JSON content type, parameters allowed. ASCII case-insensitive matches exactly what
 * lower-casing the value first would: the only other characters whose lower case starts with
 * an ASCII letter are U+212A (k, not in the pattern) and U+0130 (i followed by U+0307, which
 * then fails the next letter).
 */
const jsonContentType = /^application\/json/i;

/** Where a record was read: its key must map there (`shardOf`), as the partition mapping does. */
export interface ReadShard {
  shard: number;
  /** The pipeline's shard count. */
  shards: number;
}

const header = (msg: SourceMessage, name: string): string | undefined =>
  msg.header ? msg.header(name) : msg.headers[name];

/** A record without header `name`, saying why when its header block could not be read. */
function missingHeader(msg: SourceMessage, code: ErrorCode, name: string): DecodeResult {
  const why = msg.headerError;
  return {
    ok: false,
    code,
    message: why === undefined ? `no ${name} header` : `header block unreadable (${why}): no ${name}`,
  };
}

/**
 * The sink row of `msg`, or why it has none. With `at`, a record whose `Sluice-Key` belongs to
 * another shard is rejected: it was published to one key's subject with another key's header,
 * and committing it would break the order of that key's records, which one shard keeps.
 */
export function decodeRecord(msg: SourceMessage, at?: ReadShard): DecodeResult {
  const recordId = header(msg, Headers.msgId)?.trim();
  if (!recordId) return missingHeader(msg, ErrorCode.MissingId, Headers.msgId);
  const key = header(msg, Headers.key);
  if (!key) return missingHeader(msg, ErrorCode.MissingKey, Headers.key);
  const keyShard = at ? shardOf(key, at.shards) : undefined;
  if (at && keyShard !== at.shard) {
    return {
      ok: false,
      code: ErrorCode.KeyShardMismatch,
      message: `${Headers.key} '${key}' belongs to shard ${keyShard}, not ${at.shard}: publish to ingest.<pipeline>.<key> with the same key in the header`,
    };
  }
  const contentType = header(msg, Headers.contentType);
  const json = contentType !== undefined && jsonContentType.test(contentType);
  const checked = checkPayload(msg.data, json);
  if (!checked.ok) return checked;
  return { ok: true, row: { recordId, key, sourceSeq: msg.seq, data: msg.data, json } };
}

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

/** A checked record: one shared object, as every record of every batch is checked. */
const accepted = { ok: true } as const;

/**
 * Whether `data` decodes to a map that renders as JSON (`payloadJson`), without rendering it
 * when plain `JSON.stringify` cannot fail on it (`isPlainJson`), which is nearly always.
 */
function checkPayload(data: Uint8Array, json: boolean): typeof accepted | Rejection {
  const decoded = decodeMap(data, json);
  if (!decoded.ok) return decoded;
  if (isPlainJson(decoded.value)) return accepted;
  const rendered = renderMap(decoded.value);
  return rendered.ok ? accepted : rendered;
}

/**
 * A row's record as JSON text: what a sink that stores JSON writes. Rendering happens here, in
 * the sink, not in the worker: the worker only checks (`decodeRecord`) that the bytes decode to
 * a map and render, so a sink that keeps bytes, or discards rows, never pays for the text, and
 * the worker's CPU goes to reading. Throws (non-retryable) only for a row no worker checked.
 */
export function payloadJson(row: Pick<SinkRow, "data" | "json">): string {
  const decoded = decodeMap(row.data, row.json);
  const rendered = decoded.ok ? renderMap(decoded.value) : decoded;
  if (!rendered.ok) throw new SluiceError(rendered.code, rendered.message, { retryable: false });
  return rendered.text;
}

export function encodeRecord(value: Record<string, unknown>): Uint8Array {
  return cborEncode(value);
}
