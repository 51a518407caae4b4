/**
 * Normalisation (README "Transform stages"): the declarative steps of a pipeline's `normalise`
 * stage, applied to each record in order. Each step reads and writes fields by dotted path
 * (`customer.id`) through maps: plain objects, read by own property only (a record's
 * `constructor` is not Object's), and Map values, read by text key. A list is not a map: a
 * path does not index into it. A field is *absent* when it is missing or `undefined`.
 *
 * A step that cannot apply to a record rejects it with `NORMALISE_FAILED` and a message naming
 * the step (counted from 1 in the config's order) and why, e.g.
 * `step 3 (cast amount to number): "abc" is not a number`; the remaining steps do not run and the
 * other records of the batch are not affected. Messages of `redact` and `pseudonymise` never
 * quote the value.
 *
 * Every step is compiled once, when the stage is built (paths split, CEL programs parsed and
 * type-checked, pseudonymisation keys read): a record pays only for its own reads and writes.
 * Nothing reads a clock or draws a random number, so a redelivery is normalised alike.
 *
 * Copy-on-write: the input record's value is never changed. The first write to a record copies
 * its top-level map (once per record), and a write below it copies the maps along its path
 * (once per record and map); an unchanged record is kept as the same object. A key `__proto__`
 * is written as an own property, never as the object's prototype.
 */
import { createHmac, createSecretKey, type KeyObject } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Environment } from "@marcbachmann/cel-js";
import { UnsignedInt } from "@marcbachmann/cel-js/evaluator";
import { MAX_BIGNUM_BYTES } from "../../contract/codec.js";
import type { NormaliseStep } from "../../contract/config.js";
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import type { RecordValue } from "../../contract/ports.js";
import {
  copyForAdding,
  keep,
  type PipelineRecord,
  recordWith,
  reject,
  type Stage,
  type StageDecision,
} from "../stage.js";
import { celEnvironment, constructorKeysAsMaps } from "./rules-stage.js";

export interface NormaliseOptions {
  /**
   * The key text of a `pseudonymise` step's `keyFile` (default: the file's first line, read as
   * UTF-8, without its line ending). Called once per step, when the stage is built.
   */
  readKeyFile?(path: string): string;
  /** Where a `pseudonymise` step's `keyEnv` is looked up (default: `process.env`). */
  env?: Readonly<Record<string, string | undefined>>;
}

type Obj = Record<string, unknown>;
type Container = Obj | Map<unknown, unknown>;

/** One record on its way through the steps; a single instance per stage, reset per record. */
interface Work {
  /** The record's value as the steps so far left it. */
  root: Container;
  key: string;
  /** Maps this stage copied for the current record (a few: a list beats a set): written in place, nobody else holds them. */
  readonly owned: object[];
}

/** Applies a step to the record in `w`: null when it applied (or had nothing to do), else why not. */
type StepFn = (w: Work) => string | null;

interface CompiledStep {
  /** The step as messages name it: `cast amount to number`. */
  readonly label: string;
  readonly apply: StepFn;
}

/** Why a value conversion failed; allocated only on failure. */
class Failure {
  constructor(readonly why: string) {}
}

// ---------------------------------------------------------------------------------------------
// Paths: own-property reads, copy-on-write writes.

interface Path {
  readonly text: string;
  readonly parts: readonly string[];
}

const compilePath = (text: string): Path => ({ text, parts: text.split(".") });

/** A map a path reaches through: a Map, or an object whose prototype is Object's or null. */
function isContainer(v: unknown): v is Container {
  if (typeof v !== "object" || v === null) return false;
  if (v instanceof Map) return true;
  const proto: unknown = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

const getChild = (c: Container, k: string): unknown =>
  c instanceof Map ? c.get(k) : Object.hasOwn(c, k) ? c[k] : undefined;

const hasChild = (c: Container, k: string): boolean => (c instanceof Map ? c.has(k) : Object.hasOwn(c, k));

/** Sets an own property (or Map entry); `__proto__` is defined, so it never sets a prototype. */
function setChild(c: Container, k: string, v: unknown): void {
  if (c instanceof Map) c.set(k, v);
  else if (k === "__proto__")
    Object.defineProperty(c, k, { value: v, writable: true, enumerable: true, configurable: true });
  else c[k] = v;
}

/**
 * A copy of `c` without `k`. An object is rebuilt rather than `delete`d from: a delete turns it
 * into a dictionary, and every later read and its JSON rendering pay for that.
 */
function copyWithout(c: Container, k: string): Container {
  if (c instanceof Map) {
    const m = new Map(c);
    m.delete(k);
    return m;
  }
  const o: Obj = {};
  for (const key of Object.keys(c)) if (key !== k) setChild(o, key, c[key]);
  return o;
}

/** A shallow copy, own `__proto__` included (`copyForAdding`). */
const copyContainer = (c: Container): Container => (c instanceof Map ? new Map(c) : copyForAdding(c));

/** The value at `parts` from `root`, or undefined when a map on the way or the field is absent. */
function readPath(root: Container, parts: readonly string[]): unknown {
  let cur: unknown = root;
  for (const p of parts) {
    if (!isContainer(cur)) return undefined;
    cur = getChild(cur, p);
  }
  return cur;
}

/** The record's top-level map, copied first if this record has not copied it yet. */
function ownRoot(w: Work): Container {
  if (!w.owned.includes(w.root)) {
    w.root = copyContainer(w.root);
    w.owned.push(w.root);
  }
  return w.root;
}

/** `parent[k]`, a map, copied into `parent` first unless this record already owns it. */
function ownChild(w: Work, parent: Container, k: string, child: Container): Container {
  if (w.owned.includes(child)) return child;
  const copy = copyContainer(child);
  w.owned.push(copy);
  setChild(parent, k, copy);
  return copy;
}

/**
 * Writes `value` at `path`, copying the maps along it as needed and creating an empty map for
 * each one absent; fails when one on the way holds anything but a map (null included).
 */
function writePath(w: Work, path: Path, value: unknown): string | null {
  const { parts } = path;
  let parent = ownRoot(w);
  const last = parts.length - 1;
  for (let i = 0; i < last; i++) {
    const k = parts[i]!;
    const child = getChild(parent, k);
    if (child === undefined) {
      const made: Obj = {};
      w.owned.push(made);
      setChild(parent, k, made);
      parent = made;
    } else if (isContainer(child)) {
      parent = ownChild(w, parent, k, child);
    } else {
      return `${parts.slice(0, i + 1).join(".")} is ${kind(child)}, not a map`;
    }
  }
  setChild(parent, parts[last]!, value);
  return null;
}

/** Removes the field at `path`; nothing (and nothing copied) when it is absent. */
function removePath(w: Work, path: Path): void {
  const { parts } = path;
  const last = parts.length - 1;
  const leaf = parts[last]!;
  let cur: unknown = w.root;
  for (let i = 0; i < last; i++) cur = isContainer(cur) ? getChild(cur, parts[i]!) : undefined;
  if (!isContainer(cur) || !hasChild(cur, leaf)) return;
  if (last === 0) {
    w.root = copyWithout(w.root, leaf);
    w.owned.push(w.root);
    return;
  }
  let parent = ownRoot(w);
  for (let i = 0; i < last - 1; i++) {
    const k = parts[i]!;
    parent = ownChild(w, parent, k, getChild(parent, k) as Container);
  }
  const k = parts[last - 1]!;
  const copy = copyWithout(getChild(parent, k) as Container, leaf);
  w.owned.push(copy);
  setChild(parent, k, copy);
}

// ---------------------------------------------------------------------------------------------
// Values: descriptions for messages, the text form of scalars.

/** What a value is, for messages: never the value itself. */
function kind(v: unknown): string {
  if (v === null) return "null";
  switch (typeof v) {
    case "undefined":
      return "absent";
    case "string":
      return "text";
    case "number":
      return "a number";
    case "bigint":
      return "a big integer";
    case "boolean":
      return "a boolean";
    case "object":
      if (Array.isArray(v)) return "a list";
      if (v instanceof Uint8Array) return "bytes";
      if (v instanceof Date) return "a timestamp";
      return isContainer(v)
        ? "a map"
        : `a ${(v as { constructor?: { name?: unknown } }).constructor?.name ?? "value"}`;
    default:
      return `a ${typeof v}`;
  }
}

/** A value as messages quote it: scalars shown (text cut at 40 characters), others described. */
function show(v: unknown): string {
  switch (typeof v) {
    case "string":
      return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
    case "number":
    case "boolean":
      return String(v);
    case "bigint":
      return `${v}`;
    default:
      return kind(v);
  }
}

/**
 * The text form of a scalar: text as is, a finite number in JavaScript's shortest round-trip
 * form (`0.1`, `1e+21`), a big integer in decimal, `true`/`false`; anything else has none.
 */
function textOf(v: unknown): string | Failure {
  switch (typeof v) {
    case "string":
      return v;
    case "number":
      return Number.isFinite(v) ? String(v) : new Failure(`${v} is not a finite number`);
    case "bigint":
    case "boolean":
      return String(v);
    default:
      return new Failure(`${kind(v)} has no text form`);
  }
}

/** A decimal number: optional sign, digits, optional fraction, optional exponent; nothing around. */
const DECIMAL = /^[+-]?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?$/;
const INTEGER_TEXT = /^[+-]?\d+$/;
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);
/** Largest magnitude of a big integer a cast yields: what a record's CBOR bignum may hold. */
const BIGINT_LIMIT = 1n << BigInt(8 * MAX_BIGNUM_BYTES);
const BIGINT_MAX_DIGITS = String(BIGINT_LIMIT).length;

const isSafeBig = (b: bigint): boolean => b >= -MAX_SAFE && b <= MAX_SAFE;

// ---------------------------------------------------------------------------------------------
// Casts.

function toNumber(v: unknown): unknown {
  if (typeof v === "number") return Number.isFinite(v) ? v : new Failure(`${v} is not a finite number`);
  if (typeof v === "bigint") {
    const n = Number(v);
    return BigInt(n) === v ? n : new Failure(`${v} is not exactly a number (it would lose digits)`);
  }
  if (typeof v === "string" && DECIMAL.test(v)) {
    const n = Number(v);
    if (Number.isFinite(n)) return n;
  }
  return new Failure(`${show(v)} is not a number`);
}

function toInteger(v: unknown): unknown {
  if (typeof v === "bigint") return isSafeBig(v) ? Number(v) : v;
  if (typeof v === "number") {
    if (Number.isSafeInteger(v)) return v;
    return new Failure(
      Number.isInteger(v)
        ? `${v} is beyond ±(2^53 - 1): it may have lost digits already`
        : `${show(v)} is not an integer`,
    );
  }
  if (typeof v === "string" && DECIMAL.test(v)) {
    const n = Number(v);
    if (Number.isSafeInteger(n)) return n;
    if (INTEGER_TEXT.test(v)) {
      // Digits only, beyond a safe number: exact as a big integer, within a bignum's bounds.
      const digits = v.replace(/^[+-]?0*/, "");
      if (digits.length <= BIGINT_MAX_DIGITS) {
        const b = BigInt(v);
        if (b < BIGINT_LIMIT && b > -BIGINT_LIMIT) return b;
      }
      return new Failure(
        `${show(v)} is beyond the largest integer a record holds (2^${8 * MAX_BIGNUM_BYTES})`,
      );
    }
    if (Number.isInteger(n)) return new Failure(`${show(v)} is beyond ±(2^53 - 1): write it in digits`);
  }
  return new Failure(`${show(v)} is not an integer`);
}

function toBoolean(v: unknown): unknown {
  if (typeof v === "boolean") return v;
  if (v === "true" || v === 1 || v === 1n) return true;
  if (v === "false" || v === 0 || v === 0n) return false;
  return new Failure(`${show(v)} is not a boolean (true, false, "true", "false", 1 or 0)`);
}

const toText = (v: unknown): unknown => textOf(v);

const CASTS: Record<"string" | "number" | "integer" | "boolean", (v: unknown) => unknown> = {
  string: toText,
  number: toNumber,
  integer: toInteger,
  boolean: toBoolean,
};

// ---------------------------------------------------------------------------------------------
// Timestamps.

/**
 * Numbers below this magnitude are seconds since the epoch, others milliseconds. 1e11 s is in
 * the year 5138; 1e11 ms is 1973-03-03T09:46:40Z: milliseconds before then read as seconds.
 */
export const SECONDS_BELOW = 1e11;
/** The timestamps accepted: years 0000 to 9999, so the ISO form always has four year digits. */
export const MIN_MS = -62_167_219_200_000; // 0000-01-01T00:00:00.000Z
export const MAX_MS = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z

/**
 * ISO-8601 extended format: a date, or a date and a time (`T`, `t` or a space between them) with
 * optional seconds and fraction and an optional offset (`Z`, `±hh`, `±hhmm`, `±hh:mm`).
 */
const ISO_8601 =
  /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)?)?$/;

/** Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `days_from_civil`). */
function daysFromCivil(year: number, month: number, day: number): number {
  const y = month <= 2 ? year - 1 : year;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const doy = Math.floor((153 * (month > 2 ? month - 3 : month + 9) + 2) / 5) + day - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146_097 + doe - 719_468;
}

const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
const isLeap = (y: number): boolean => (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;

/** Milliseconds since the epoch of ISO-8601 text; null when it is not (a valid) one. */
export function parseIso(s: string): number | null {
  const m = ISO_8601.exec(s);
  if (m === null) return null;
  const year = +m[1]!;
  const month = +m[2]!;
  const day = +m[3]!;
  const hour = m[4] === undefined ? 0 : +m[4];
  const minute = m[5] === undefined ? 0 : +m[5];
  const second = m[6] === undefined ? 0 : +m[6];
  // Digits beyond the millisecond are dropped (truncated), never rounded into the next one.
  const millis = m[7] === undefined ? 0 : +m[7].slice(0, 3).padEnd(3, "0");
  const offHours = m[10] === undefined ? 0 : +m[10];
  const offMinutes = m[11] === undefined ? 0 : +m[11];
  const monthDays = month === 2 && isLeap(year) ? 29 : DAYS_IN_MONTH[month - 1];
  if (monthDays === undefined || day < 1 || day > monthDays) return null;
  if (hour > 23 || minute > 59 || second > 59 || offHours > 23 || offMinutes > 59) return null;
  const offset = (m[9] === "-" ? -1 : 1) * (offHours * 60 + offMinutes) * 60_000;
  return (
    daysFromCivil(year, month, day) * 86_400_000 +
    ((hour * 60 + minute) * 60 + second) * 1000 +
    millis -
    offset
  );
}

/** A number of seconds (below `SECONDS_BELOW`) or milliseconds, as whole milliseconds. */
const epochMs = (n: number): number => (Math.abs(n) < SECONDS_BELOW ? Math.round(n * 1000) : Math.round(n));

function timestampMs(v: unknown): number | Failure {
  let ms: number;
  if (typeof v === "number") {
    if (!Number.isFinite(v)) return new Failure(`${v} is not a timestamp`);
    ms = epochMs(v);
  } else if (typeof v === "bigint") {
    if (!isSafeBig(v)) return new Failure(`${v} is out of range (years 0000 to 9999)`);
    ms = epochMs(Number(v));
  } else if (typeof v === "string") {
    if (DECIMAL.test(v)) {
      const n = Number(v);
      if (!Number.isFinite(n)) return new Failure(`${show(v)} is out of range (years 0000 to 9999)`);
      ms = epochMs(n);
    } else {
      const parsed = parseIso(v);
      if (parsed === null)
        return new Failure(`${show(v)} is not an ISO-8601 timestamp or a number of seconds or milliseconds`);
      ms = parsed;
    }
  } else if (v instanceof Date) {
    ms = v.getTime();
    if (Number.isNaN(ms)) return new Failure("an invalid date is not a timestamp");
  } else {
    return new Failure(`${kind(v)} is not a timestamp`);
  }
  if (!(ms >= MIN_MS && ms <= MAX_MS)) return new Failure(`${show(v)} is out of range (years 0000 to 9999)`);
  return ms === 0 ? 0 : ms; // never -0
}

const TWO_DIGITS = Array.from({ length: 100 }, (_, i) => String(i).padStart(2, "0"));
const THREE_DIGITS = Array.from({ length: 1000 }, (_, i) => String(i).padStart(3, "0"));
const MS_PER_DAY = 86_400_000;

/**
 * `new Date(ms).toISOString()` for `MIN_MS <= ms <= MAX_MS` (four-digit years), about five times
 * faster: the day number becomes a civil date arithmetically (H. Hinnant's `civil_from_days`,
 * proleptic Gregorian like `Date`) and the digits come from tables.
 */
export function isoOfMs(ms: number): string {
  const days = Math.floor(ms / MS_PER_DAY);
  let t = ms - days * MS_PER_DAY;
  const z = days + 719_468;
  const era = Math.floor(z / 146_097);
  const doe = z - era * 146_097;
  const yoe = Math.floor(
    (doe - Math.floor(doe / 1460) + Math.floor(doe / 36_524) - Math.floor(doe / 146_096)) / 365,
  );
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const day = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const month = mp < 10 ? mp + 3 : mp - 9;
  const year = yoe + era * 400 + (month <= 2 ? 1 : 0);
  const milli = t % 1000;
  t = (t - milli) / 1000;
  const sec = t % 60;
  t = (t - sec) / 60;
  const min = t % 60;
  const hour = (t - min) / 60;
  return (
    `${TWO_DIGITS[Math.floor(year / 100)]}${TWO_DIGITS[year % 100]}-${TWO_DIGITS[month]}-${TWO_DIGITS[day]}` +
    `T${TWO_DIGITS[hour]}:${TWO_DIGITS[min]}:${TWO_DIGITS[sec]}.${THREE_DIGITS[milli]}Z`
  );
}

// ---------------------------------------------------------------------------------------------
// Redaction and pseudonyms.

const isHighSurrogate = (c: number): boolean => c >= 0xd800 && c <= 0xdbff;
const isLowSurrogate = (c: number): boolean => c >= 0xdc00 && c <= 0xdfff;

/**
 * `s` with every character (code point) but its last `keep` replaced by `*`; when `s` has no more
 * than `keep` characters, all of them are replaced, so a mask never shows a whole value.
 */
export function mask(s: string, keep: number): string {
  // Walk back `keep` code points from the end, then count those before.
  let cut = s.length;
  let kept = 0;
  while (kept < keep && cut > 0) {
    cut -=
      cut >= 2 && isLowSurrogate(s.charCodeAt(cut - 1)) && isHighSurrogate(s.charCodeAt(cut - 2)) ? 2 : 1;
    kept++;
  }
  if (cut === 0) return "*".repeat(kept);
  let stars = 0;
  for (let i = 0; i < cut; i++) {
    if (i + 1 < cut && isHighSurrogate(s.charCodeAt(i)) && isLowSurrogate(s.charCodeAt(i + 1))) i++;
    stars++;
  }
  return "*".repeat(stars) + s.slice(cut);
}

const defaultReadKeyFile = (path: string): string => readFileSync(path, "utf8").split(/\r?\n/)[0] ?? "";

/** A pseudonymise step's key; throws `INVALID_CONFIG` naming where it was looked for, never the key. */
function readKey(
  where: { keyEnv?: string | undefined; keyFile?: string | undefined },
  opts: NormaliseOptions,
  fail: (why: string, cause?: unknown) => never,
): KeyObject {
  let text: string;
  let source: string;
  if (where.keyEnv !== undefined && where.keyFile === undefined) {
    source = `environment variable ${where.keyEnv}`;
    const v = (opts.env ?? process.env)[where.keyEnv];
    if (v === undefined) return fail(`${source} is not set`);
    text = v;
  } else if (where.keyFile !== undefined && where.keyEnv === undefined) {
    source = `key file ${where.keyFile}`;
    try {
      text = (opts.readKeyFile ?? defaultReadKeyFile)(where.keyFile);
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      return fail(`cannot read ${source}${typeof code === "string" ? ` (${code})` : ""}`);
    }
  } else {
    return fail("name the key in exactly one of keyEnv or keyFile");
  }
  if (text === "") return fail(`the key in ${source} is empty`);
  return createSecretKey(Buffer.from(text, "utf8"));
}

// ---------------------------------------------------------------------------------------------
// CEL results.

/**
 * A CEL result as a record value: ints (bigints) as numbers when safe, big integers otherwise;
 * unsigned ints likewise; Maps as plain objects (keys as text); timestamps as ISO-8601 text;
 * bytes as they are. NaN, infinities and other CEL values (durations, types) fail. Copies only
 * what changes. Recursive: a value too deep throws RangeError, caught by the stage.
 */
function fromCel(v: unknown): unknown {
  switch (typeof v) {
    case "string":
    case "boolean":
      return v;
    case "number":
      return Number.isFinite(v) ? v : new Failure(`expression gave ${v}, not a finite number`);
    case "bigint":
      return isSafeBig(v) ? Number(v) : v;
    case "object":
      break;
    default:
      return new Failure(`expression gave ${kind(v)}`);
  }
  if (v === null || v instanceof Uint8Array) return v;
  if (Array.isArray(v)) {
    let out: unknown[] | null = null;
    for (let i = 0; i < v.length; i++) {
      const y = fromCel(v[i]);
      if (y instanceof Failure) return y;
      if (y === v[i]) continue;
      out ??= v.slice();
      out[i] = y;
    }
    return out ?? v;
  }
  if (v instanceof Map) {
    const out: Obj = {};
    for (const [k, x] of v) {
      const key = k instanceof UnsignedInt ? String(k.value) : k;
      if (
        typeof key !== "string" &&
        typeof key !== "bigint" &&
        typeof key !== "number" &&
        typeof key !== "boolean"
      )
        return new Failure(`expression gave a map with ${kind(key)} as a key`);
      const y = fromCel(x);
      if (y instanceof Failure) return y;
      setChild(out, String(key), y);
    }
    return out;
  }
  if (v instanceof Date) {
    const t = v.getTime();
    return Number.isNaN(t) ? new Failure("expression gave an invalid timestamp") : v.toISOString();
  }
  if (v instanceof UnsignedInt) return fromCel(v.value);
  if (isContainer(v)) {
    let out: Obj | null = null;
    for (const k of Object.keys(v)) {
      const x = (v as Obj)[k];
      const y = fromCel(x);
      if (y instanceof Failure) return y;
      if (y === x) continue;
      out ??= { ...(v as Obj) };
      setChild(out, k, y);
    }
    return out ?? v;
  }
  return new Failure(`expression gave ${kind(v)}, which a record cannot hold`);
}

const firstLine = (err: unknown): string => String((err as Error)?.message ?? err).split("\n")[0]!;

// ---------------------------------------------------------------------------------------------
// Steps.

/**
 * A step that replaces a field's value by `convert(value)`: an absent or null field is left as
 * it is; a `Failure` fails the step; an unchanged value writes (and copies) nothing.
 */
function valueStep(path: Path, convert: (v: unknown) => unknown): StepFn {
  const { parts } = path;
  return (w) => {
    const v = readPath(w.root, parts);
    if (v === undefined || v === null) return null;
    const out = convert(v);
    if (out instanceof Failure) return out.why;
    return out === v ? null : writePath(w, path, out);
  };
}

function deepFreeze<T>(v: T): T {
  if (typeof v === "object" && v !== null && !Object.isFrozen(v)) {
    for (const x of Object.values(v)) deepFreeze(x);
    Object.freeze(v);
  }
  return v;
}

/** Compiles step `index` (from 0); throws `INVALID_CONFIG` naming it when it cannot. */
function compileStep(
  step: NormaliseStep,
  index: number,
  env: Environment,
  opts: NormaliseOptions,
): CompiledStep {
  let label = Object.keys(step)[0] ?? "step";
  const fail = (why: string): never => {
    throw new SluiceError(ErrorCode.InvalidConfig, `normalise step ${index + 1} (${label}): ${why}`);
  };

  /** `rename {from, to}`: moves the field; an absent `from` is a no-op, an existing `to` is replaced. */
  if ("rename" in step) {
    const from = compilePath(step.rename.from);
    const to = compilePath(step.rename.to);
    label = `rename ${from.text} to ${to.text}`;
    return {
      label,
      apply: (w) => {
        const v = readPath(w.root, from.parts);
        if (v === undefined || from.text === to.text) return null;
        removePath(w, from);
        return writePath(w, to, v);
      },
    };
  }

  /** `drop F | [F…]`: removes each field; an absent one is a no-op. Never fails. */
  if ("drop" in step) {
    const paths = (typeof step.drop === "string" ? [step.drop] : step.drop).map(compilePath);
    label = `drop ${paths.map((p) => p.text).join(", ")}`;
    return {
      label,
      apply: (w) => {
        for (const p of paths) removePath(w, p);
        return null;
      },
    };
  }

  /**
   * `default {field, value}`: sets the field to `value` when it is absent or null. A map or list
   * value is one frozen copy shared by every record it fills (never written in place).
   */
  if ("default" in step) {
    const path = compilePath(step.default.field);
    const value = deepFreeze(structuredClone(step.default.value));
    label = `default ${path.text}`;
    return {
      label,
      apply: (w) => {
        const v = readPath(w.root, path.parts);
        return v === undefined || v === null ? writePath(w, path, value) : null;
      },
    };
  }

  /**
   * `cast {field, to}` (absent or null: left as is):
   * - `number`: a finite number; a big integer the double holds exactly; text that is a decimal
   *   number (`DECIMAL`: sign, digits, fraction, exponent; no spaces, no `0x`, not empty).
   * - `integer`: a safe integer (|n| ≤ 2^53 - 1) as a number, from a number, a big integer or
   *   decimal text of an integral value (`"12"`, `"1.0"`, `"1e3"`); digits only beyond that: a
   *   big integer (up to 2^1024); a fraction, or a number beyond it, fails.
   * - `boolean`: `true`/`false`, the text `"true"`/`"false"` (lower case), the numbers 1/0.
   * - `string`: text as is; a finite number in shortest round-trip form; a big integer in
   *   decimal; a boolean as `true`/`false`. A map, a list, bytes or a timestamp fails.
   */
  if ("cast" in step) {
    const path = compilePath(step.cast.field);
    const to = step.cast.to;
    label = `cast ${path.text} to ${to}`;
    const convert = CASTS[to];
    if (convert === undefined) return fail(`cannot cast to ${JSON.stringify(to)}`);
    return { label, apply: valueStep(path, convert) };
  }

  /**
   * `trim F`, `lower F`, `upper F`: text only (absent or null: left as is; anything else fails).
   * Trim removes white space and line terminators at both ends (`String.prototype.trim`); the
   * case mappings are Unicode's default, the same in every locale.
   */
  if ("trim" in step || "lower" in step || "upper" in step) {
    const [op, field, fn]: [string, string, (s: string) => string] =
      "trim" in step
        ? ["trim", step.trim, (s) => s.trim()]
        : "lower" in step
          ? ["lower", step.lower, (s) => s.toLowerCase()]
          : ["upper", step.upper, (s) => s.toUpperCase()];
    const path = compilePath(field);
    label = `${op} ${path.text}`;
    return {
      label,
      apply: valueStep(path, (v) => (typeof v === "string" ? fn(v) : new Failure(`${show(v)} is not text`))),
    };
  }

  /**
   * `timestamp {field, to}` (absent or null: left as is): reads ISO-8601 text (`ISO_8601`;
   * validated field by field; no offset means UTC, never the worker's zone; digits past the
   * millisecond truncated), a number or decimal text of seconds (|n| < 1e11) or milliseconds
   * (otherwise), or a CBOR date; writes `iso` (`YYYY-MM-DDTHH:mm:ss.sssZ`) or `ms` (whole
   * milliseconds since the epoch, fractions rounded). Years 0000 to 9999 only.
   */
  if ("timestamp" in step) {
    const path = compilePath(step.timestamp.field);
    const to = step.timestamp.to;
    label = `timestamp ${path.text} to ${to}`;
    if (to !== "iso" && to !== "ms") return fail(`cannot write a timestamp as ${JSON.stringify(to)}`);
    const iso = to === "iso";
    return {
      label,
      apply: valueStep(path, (v) => {
        const ms = timestampMs(v);
        if (ms instanceof Failure) return ms;
        return iso ? isoOfMs(ms) : ms;
      }),
    };
  }

  /**
   * `redact {field, mode, keep}`: `drop` removes the field (absent: no-op); `mask` (absent or null:
   * left as is) replaces the field's text form (see `textOf`: numbers, big integers and booleans
   * too) by `*` but its last `keep` characters, all of them when it has no more than `keep`; a
   * map, list or bytes fails. The length shows.
   */
  if ("redact" in step) {
    const path = compilePath(step.redact.field);
    const { mode, keep: keepChars } = step.redact;
    label = `redact ${path.text}`;
    if (mode === "drop")
      return {
        label,
        apply: (w) => {
          removePath(w, path);
          return null;
        },
      };
    if (mode !== "mask") return fail(`unknown mode ${JSON.stringify(mode)}`);
    if (!Number.isSafeInteger(keepChars) || keepChars < 0) return fail("keep is not a whole number ≥ 0");
    return {
      label,
      apply: valueStep(path, (v) => {
        const text = textOf(v);
        return text instanceof Failure ? new Failure(`${kind(v)} cannot be masked`) : mask(text, keepChars);
      }),
    };
  }

  /**
   * `pseudonymise {field, keyEnv | keyFile}` (absent or null: left as is): the lowercase hex
   * HMAC-SHA-256, keyed by the key's UTF-8 bytes, of the UTF-8 of the field's text form (so `42`
   * and `"42"` get the same pseudonym); a map, list or bytes fails. The key is read once, here.
   */
  if ("pseudonymise" in step) {
    const path = compilePath(step.pseudonymise.field);
    label = `pseudonymise ${path.text}`;
    const key = readKey(step.pseudonymise, opts, fail);
    return {
      label,
      apply: valueStep(path, (v) => {
        const text = textOf(v);
        if (text instanceof Failure) return new Failure(`${kind(v)} cannot be pseudonymised`);
        return createHmac("sha256", key).update(text, "utf8").digest("hex");
      }),
    };
  }

  /**
   * `set {field, expression}`: the field set to a CEL expression's value over `record` (the
   * value as the steps before left it) and `key`, as in quality rules. Parsed and type-checked
   * once. Results: ints are numbers when safe (else big integers), maps plain objects,
   * timestamps ISO-8601 text; an evaluation error (a missing field, a division by zero), a NaN
   * or infinity, or a value no record holds (a duration, a type) fails the step.
   */
  if ("set" in step) {
    const path = compilePath(step.set.field);
    const source = step.set.expression;
    label = `set ${path.text}`;
    let program: ReturnType<Environment["parse"]>;
    try {
      program = env.parse(source);
    } catch (err) {
      return fail(`expression does not parse: ${firstLine(err)}`);
    }
    const checked = env.check(source);
    if (!checked.valid) return fail(`expression does not type-check: ${firstLine(checked.error)}`);
    // One context object per step, refilled per record (evaluation is synchronous).
    const ctx: { record: unknown; key: string } = { record: null, key: "" };
    return {
      label,
      apply: (w) => {
        let out: unknown;
        ctx.key = w.key;
        try {
          ctx.record = w.root;
          out = program(ctx);
        } catch (err) {
          // An own `constructor` key fails every expression in cel-js: again with such maps as Maps.
          const asMaps = constructorKeysAsMaps(w.root);
          if (asMaps === w.root) return `expression failed: ${firstLine(err)}`;
          try {
            ctx.record = asMaps;
            out = program(ctx);
          } catch (again) {
            return `expression failed: ${firstLine(again)}`;
          }
        } finally {
          ctx.record = null;
        }
        const value = fromCel(out);
        if (value instanceof Failure) return value.why;
        // The result may share maps this record owns (`record.customer`, `record` itself): from
        // here on, they are copied again before any write.
        if (typeof value === "object" && value !== null) w.owned.length = 0;
        return writePath(w, path, value);
      },
    };
  }

  return fail("not a normalise step");
}

/** Compiles the steps; throws `INVALID_CONFIG` naming the first that cannot compile. */
export function compileSteps(steps: readonly NormaliseStep[], opts: NormaliseOptions = {}): CompiledStep[] {
  const env = celEnvironment();
  return steps.map((s, i) => compileStep(s, i, env, opts));
}

const EMPTY: Container = Object.freeze({});

/**
 * The `normalise` stage: its steps compiled once; per record, one decision: `keep` (the same
 * record when no step changed it) or `reject` with `NORMALISE_FAILED` naming the first step that
 * could not apply. Never throws for a record.
 */
export class NormaliseStage implements Stage {
  readonly name = "normalise";
  private readonly steps: readonly CompiledStep[];
  private readonly work: Work = { root: EMPTY, key: "", owned: [] };

  constructor(steps: readonly NormaliseStep[], opts: NormaliseOptions = {}) {
    this.steps = compileSteps(steps, opts);
  }

  process(batch: readonly PipelineRecord[]): StageDecision<PipelineRecord>[] {
    const out = new Array<StageDecision<PipelineRecord>>(batch.length);
    for (let i = 0; i < batch.length; i++) out[i] = this.decide(batch[i]!);
    return out;
  }

  /** One record's decision. */
  decide(r: PipelineRecord): StageDecision<PipelineRecord> {
    const w = this.work;
    const steps = this.steps;
    w.root = r.value;
    w.key = r.key;
    let i = 0;
    try {
      for (; i < steps.length; i++) {
        const why = steps[i]!.apply(w);
        if (why !== null) return this.rejection(i, why);
      }
      const value = w.root as RecordValue;
      return value === r.value ? keep(r) : keep(recordWith(r, value));
    } catch (err) {
      // Not a record's fault the steps foresaw (a value nested too deep for a CEL result, say):
      // still the record's, never the batch's.
      return this.rejection(i, firstLine(err));
    } finally {
      w.root = EMPTY;
      w.owned.length = 0;
    }
  }

  private rejection(index: number, why: string): StageDecision<PipelineRecord> {
    const label = this.steps[index]?.label ?? "normalise";
    return reject({
      ok: false,
      code: ErrorCode.NormaliseFailed,
      message: `step ${index + 1} (${label}): ${why}`,
    });
  }
}

/** A `normalise` stage of `steps` (see `NormaliseStage`). */
export const normaliseStage = (steps: readonly NormaliseStep[], opts?: NormaliseOptions): NormaliseStage =>
  new NormaliseStage(steps, opts);
