/**
 * Bad input never crashes a worker: whatever bytes and headers a record carries, the data path
 * (decode, schema, quality rules, commit) dead-letters it with a stable code or commits it, never
 * throws, never loses it, never changes `Object.prototype`, and the next batch still commits.
 * A stage that throws fails the batch, and the lease retries it forever: for bad input that
 * would be a crash loop, so a throw anywhere here is the bug these properties look for.
 */
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import type { JsMsg } from "@nats-io/jetstream";
import { Encoder } from "cbor-x";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { JetStreamSourceMessage } from "../../shared/adapters/nats/jetstream-message.js";
import { MemorySink } from "../../shared/adapters/sink/memory-sink.js";
import {
  encodeRecord,
  MAX_BIGNUM_BYTES,
  MAX_DEPTH,
  messageFingerprint,
} from "../../shared/contract/codec.js";
import { parseConfig } from "../../shared/contract/config.js";
import { ErrorCode } from "../../shared/contract/errors.js";
import type { ShardRef } from "../../shared/contract/ownership.js";
import type { DeadLetter, ShardFeed, ShardSource, SourceMessage } from "../../shared/contract/ports.js";
import { shardOf } from "../../shared/contract/wire.js";
import { BatchCommitter } from "../../shared/pipeline/batch-committer.js";
import { HistoryGuard } from "../../shared/pipeline/history-guard.js";
import { type RegistryValue, SchemaRegistry } from "../../shared/pipeline/schema-registry.js";
import { ShardPipeline } from "../../shared/pipeline/shard-pipeline.js";
import type { Stage } from "../../shared/pipeline/stage.js";
import { StageChain } from "../../shared/pipeline/stage-chain.js";
import { decodeRecord, decodeStage } from "../../shared/pipeline/stages/decode-stage.js";
import { RulesStage } from "../../shared/pipeline/stages/rules-stage.js";
import { SchemaStage } from "../../shared/pipeline/stages/schema-stage.js";
import { MemoryJsonStore } from "../../shared/testkit/memory-broker.js";

const REF: ShardRef = { pipeline: "orders", shard: 0 };
const SHARDS = 4;
const enc = new TextEncoder();
const CODES = new Set<string>(Object.values(ErrorCode));
const MIB = 1 << 20;

/** Keys of the shard the records are read on, and keys of the other shards. */
const allKeys = Array.from({ length: 400 }, (_, i) => `k${i}`);
const ownKeys = allKeys.filter((k) => shardOf(k, SHARDS) === REF.shard).slice(0, 24);
const otherKeys = allKeys.filter((k) => shardOf(k, SHARDS) !== REF.shard).slice(0, 24);

// ---------------------------------------------------------------------------------------------
// The pipeline under test: a schema subject with two versions (and another subject, whose ids a
// record may name), and enforced pattern, range and CEL rules plus shadowed ones.

const v1 = {
  type: "object",
  properties: { id: { type: "string" }, amount: { type: "number" }, tag: { type: "string" } },
  required: ["id", "amount"],
  additionalProperties: true,
};
const v2 = { ...v1, properties: { ...v1.properties, currency: { type: "string", default: "EUR" } } };

const rules = parseConfig({
  pipelines: [
    {
      name: "orders",
      rules: [
        { name: "id_format", pattern: { field: "id", regex: "^[A-Za-z0-9_-]+$" } },
        { name: "amount_range", range: { field: "amount", min: -1e9, max: 1e9 } },
        // Equality walks the whole value: deep, NaN and odd values (typed arrays, dates) reach CEL.
        {
          name: "extra_sane",
          expression: '!has(record.extra) || (record.extra == record.extra && key != "")',
        },
        { name: "score_range", mode: "shadow", range: { field: "score", min: 0, max: 100 } },
        { name: "has_ctor", mode: "shadow", notNull: "constructor.prototype" },
      ],
    },
  ],
}).pipelines[0]!.rules;

/** Schema ids registered before any batch: the subject's versions and another subject's. */
const schemaIds = { v1: 0, v2: 0, other: 0 };

async function buildStages(): Promise<Stage[]> {
  const registry = new SchemaRegistry(new MemoryJsonStore<RegistryValue>());
  schemaIds.v1 = (await registry.register("orders", v1)).id;
  schemaIds.v2 = (await registry.register("orders", v2)).id;
  schemaIds.other = (await registry.register("payments", { type: "object" })).id;
  return [new SchemaStage("orders", registry, { now: () => 0 }), new RulesStage("orders", rules)];
}
const stagesReady = buildStages();

// ---------------------------------------------------------------------------------------------
// Hand-made CBOR, for what cbor-x's encoder will not write (10 000 levels overflow its stack) or
// would write differently (a plain map with a `__proto__` key, tags it never emits).

const cat = (...parts: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
};
function head(major: number, n: number): Uint8Array {
  const m = major << 5;
  if (n < 24) return Uint8Array.of(m | n);
  if (n < 0x100) return Uint8Array.of(m | 24, n);
  if (n < 0x10000) return Uint8Array.of(m | 25, n >> 8, n & 0xff);
  return Uint8Array.of(m | 26, (n >>> 24) & 0xff, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff);
}
const text = (s: string): Uint8Array => {
  const b = enc.encode(s);
  return cat(head(3, b.length), b);
};
const byteString = (b: Uint8Array): Uint8Array => cat(head(2, b.length), b);
const uint = (n: number): Uint8Array => head(0, n);
const tagged = (tag: number, item: Uint8Array): Uint8Array => cat(head(6, tag), item);
const cborArray = (...items: Uint8Array[]): Uint8Array => cat(head(4, items.length), ...items);
const cborMap = (...entries: Array<[string | Uint8Array, Uint8Array]>): Uint8Array =>
  cat(head(5, entries.length), ...entries.flatMap(([k, v]) => [typeof k === "string" ? text(k) : k, v]));
const TRUE = Uint8Array.of(0xf5);
/** `depth` one-element arrays around `leaf` (0x81 …), or one-entry maps {"a": …} (0xa1 0x61 0x61 …). */
function nested(depth: number, maps: boolean, leaf: Uint8Array = uint(1)): Uint8Array {
  const unit = maps ? [0xa1, 0x61, 0x61] : [0x81];
  const out = new Uint8Array(depth * unit.length + leaf.length);
  for (let i = 0; i < depth; i++) out.set(unit, i * unit.length);
  out.set(leaf, depth * unit.length);
  return out;
}
/** A valid record with `extra` set to the encoded item. */
const recordWith = (extra: Uint8Array): Uint8Array =>
  cborMap(["id", text("a1")], ["amount", uint(5)], ["extra", extra]);
/** The same in JSON text. */
const jsonNested = (depth: number, maps: boolean): string =>
  `{"id":"a1","amount":5,"extra":${(maps ? '{"a":' : "[").repeat(depth)}1${(maps ? "}" : "]").repeat(depth)}}`;
/**
 * A value-sharing DAG (tags 28/29): each level is [next level, the same again], 2^depth leaves
 * in a few bytes. Shareable values are numbered as their tags are met, outermost first.
 */
function sharedDag(depth: number): Uint8Array {
  let item = tagged(28, cborArray(uint(1), uint(1)));
  for (let j = depth - 2; j >= 0; j--) item = tagged(28, cborArray(item, tagged(29, uint(j + 1))));
  return item;
}
const recordsEncoder = new Encoder({ useRecords: true });

// ---------------------------------------------------------------------------------------------
// Records as plain data (so a counterexample prints), then as source messages.

type Expect = "commit" | "dead" | "any" | ErrorCode;

interface Spec {
  kind: string;
  data: Uint8Array;
  /** Headers besides `Nats-Msg-Id`. */
  headers?: Record<string, string>;
  /** The record id; absent: a unique one; null: no `Nats-Msg-Id` header at all. */
  id?: string | null;
  /** The subject's key (default: a key of the shard read). */
  key?: string;
  /** A raw NATS header block: the message is a JetStream message reading it. */
  block?: Uint8Array;
  /** The source could not read the header block (as `JetStreamSourceMessage` reports it). */
  headerError?: string;
  expect: Expect;
}

const requireHere = createRequire(import.meta.url);
const jetstreamLib = dirname(requireHere.resolve("@nats-io/jetstream"));
const requireJs = createRequire(join(jetstreamLib, "mod.js"));
const { toJsMsg } = requireJs(join(jetstreamLib, "jsmsg.js")) as {
  toJsMsg(m: unknown, ackTimeout?: number): JsMsg;
};
const { MsgImpl } = requireJs("@nats-io/nats-core/internal") as {
  MsgImpl: new (
    ma: { subject: Uint8Array; reply?: Uint8Array; sid: number; hdr: number; size: number },
    data: Uint8Array,
    publisher: unknown,
  ) => unknown;
};

/** A JetStream delivery of `block` then `data`, as the consumer hands it over (see jetstream-message.test.ts). */
function jetStreamMessage(subject: string, block: Uint8Array, data: Uint8Array, seq: number): SourceMessage {
  const raw = cat(block, data);
  const reply = `$JS.ACK.SLUICE_IN_orders.orders-s0-e1.1.${seq}.${seq}.1712345678901234567.0`;
  const core = new MsgImpl(
    { subject: enc.encode(subject), reply: enc.encode(reply), sid: 1, hdr: block.length, size: raw.length },
    Buffer.from(raw),
    { publish() {} },
  );
  return new JetStreamSourceMessage(toJsMsg(core, 5_000));
}

function toMessage(spec: Spec, seq: number): SourceMessage {
  const subject = `sluice.in.orders.${REF.shard}.${spec.key ?? ownKeys[seq % ownKeys.length]!}`;
  if (spec.block) return jetStreamMessage(subject, spec.block, spec.data, seq);
  const headers: Record<string, string> = {
    ...(spec.id === null ? {} : { "Nats-Msg-Id": spec.id ?? `${spec.kind}-${seq}` }),
    ...spec.headers,
  };
  const msg: SourceMessage = { seq, deliverySeq: seq, subject, data: spec.data, headers, token: seq };
  if (spec.headerError === undefined) return msg;
  return { ...msg, headers: {}, header: () => undefined, headerError: spec.headerError };
}

// ---------------------------------------------------------------------------------------------
// Generators.

const JSON_CT: Record<string, string> = { "Content-Type": "application/json" };
const validValue = fc.record(
  {
    id: fc.stringMatching(/^[A-Za-z0-9_-]{1,16}$/),
    amount: fc.oneof(
      fc.integer({ min: -1_000_000, max: 1_000_000 }),
      fc.double({ min: -1e6, max: 1e6, noNaN: true }),
    ),
    tag: fc.string({ maxLength: 8 }),
    score: fc.integer({ min: -5, max: 105 }),
  },
  { requiredKeys: ["id", "amount"] },
);

const validCbor = validValue.map((v): Spec => ({ kind: "valid", data: encodeRecord(v), expect: "commit" }));
const validJson = fc
  .tuple(validValue, fc.constantFrom("application/json", "Application/JSON; charset=utf-8"))
  .map(
    ([v, ct]): Spec => ({
      kind: "valid-json",
      data: enc.encode(JSON.stringify(v)),
      headers: { "Content-Type": ct },
      expect: "commit",
    }),
  );
const validWithSchemaId = fc
  .tuple(validValue, fc.constantFrom<"v1" | "v2">("v1", "v2"), fc.constantFrom("", " ", "00"))
  .map(
    ([v, which, pad]): Spec => ({
      kind: "valid-schema-id",
      data: encodeRecord(v),
      headers: { "Sluice-Schema-Id": `${pad}${schemaIds[which]}${pad.trim() === "" ? pad : ""}` },
      expect: "commit",
    }),
  );

const randomBytes = fc.tuple(fc.uint8Array({ maxLength: 64 }), fc.boolean()).map(
  ([data, asJson]): Spec => ({
    kind: "random",
    data,
    ...(asJson ? { headers: JSON_CT } : {}),
    expect: "any",
  }),
);

const truncatedCbor = validValue.chain((v) => {
  const full = encodeRecord(v);
  return fc
    .integer({ min: 0, max: full.length - 1 })
    .map((n): Spec => ({ kind: "truncated", data: full.slice(0, n), expect: ErrorCode.UndecodablePayload }));
});

const invalidJson = fc
  .oneof(
    fc.string({ maxLength: 24 }).filter((s) => {
      try {
        JSON.parse(s);
        return false;
      } catch {
        return true;
      }
    }),
    validValue.chain((v) => {
      const s = JSON.stringify(v);
      return fc.integer({ min: 0, max: s.length - 1 }).map((n) => s.slice(0, n));
    }),
  )
  .map((s): Spec => ({ kind: "invalid-json", data: enc.encode(s), headers: JSON_CT, expect: "dead" }));
/** JSON whose bytes are not UTF-8 (a lone continuation byte, a truncated sequence, an overlong one). */
const invalidUtf8Json = fc
  .constantFrom([0xff], [0xc3, 0x28], [0xe2, 0x82], [0xc0, 0xaf], [0xed, 0xa0, 0x80])
  .map(
    (bad): Spec => ({
      kind: "json-not-utf8",
      data: cat(enc.encode('{"id":"a1","amount":5,"note":"'), Uint8Array.from(bad), enc.encode('"}')),
      headers: JSON_CT,
      expect: ErrorCode.UndecodablePayload,
    }),
  );

/**
 * Nesting on either side of `MAX_DEPTH` (the record is one level, `extra` `depth` more): the
 * decision depends on the depth alone. The 10 000-level cases are fixed examples below.
 */
const deepValue = fc
  .record({ depth: fc.integer({ min: 1, max: 2_500 }), maps: fc.boolean(), asJson: fc.boolean() })
  .map(({ depth, maps, asJson }): Spec => {
    const expect = depth + 1 > MAX_DEPTH ? ErrorCode.UndecodablePayload : "commit";
    return asJson
      ? { kind: "deep-json", data: enc.encode(jsonNested(depth, maps)), headers: JSON_CT, expect }
      : { kind: "deep-cbor", data: recordWith(nested(depth, maps)), expect };
  });

/** Long strings as a field, as a key, as the record id; the 1 MiB cases are fixed examples below. */
const longString = fc
  .record({
    length: fc.integer({ min: 1, max: 8_192 }),
    where: fc.constantFrom("id", "tag", "key", "msgId"),
    clean: fc.boolean(),
  })
  .map(({ length, where, clean }): Spec => longStringSpec(length, where, clean));
function longStringSpec(length: number, where: string, clean: boolean): Spec {
  const s = "a".repeat(length - 1) + (clean ? "b" : " ");
  const kind = `long-${where}`;
  if (where === "id")
    return { kind, data: encodeRecord({ id: s, amount: 1 }), expect: clean ? "commit" : "dead" };
  if (where === "tag") return { kind, data: encodeRecord({ id: "a1", amount: 1, tag: s }), expect: "commit" };
  if (where === "key")
    return { kind, data: cborMap(["id", text("a1")], ["amount", uint(1)], [s, TRUE]), expect: "commit" };
  return { kind, data: encodeRecord({ id: "a1", amount: 1 }), id: s, expect: clean ? "commit" : "any" };
}

const POLLUTION = { polluted: true, prototype: { polluted: true } };
/** `__proto__`, `constructor` and `prototype` as own keys, at the top and nested, three ways. */
const protoKeys = fc
  .record({
    key: fc.constantFrom("__proto__", "constructor", "prototype"),
    nestedIn: fc.constantFrom(null, "extra", "tag"),
    encoding: fc.constantFrom("cbor-map", "cbor-tag-259", "json"),
  })
  .map(({ key, nestedIn, encoding }): Spec => {
    const kind = `proto-${encoding}`;
    if (encoding === "json") {
      const inner = `{${JSON.stringify(key)}:${JSON.stringify(POLLUTION)}}`;
      const body =
        nestedIn === null
          ? `{"id":"a1","amount":5,${JSON.stringify(key)}:${JSON.stringify(POLLUTION)}}`
          : `{"id":"a1","amount":5,"${nestedIn}":${inner}}`;
      return {
        kind,
        data: enc.encode(body),
        headers: JSON_CT,
        expect: nestedIn === "tag" ? ErrorCode.SchemaViolation : "commit",
      };
    }
    const pollution = cborMap(["polluted", TRUE], ["prototype", cborMap(["polluted", TRUE])]);
    const wrap = (m: Uint8Array): Uint8Array => (encoding === "cbor-tag-259" ? tagged(259, m) : m);
    const data =
      nestedIn === null
        ? wrap(cborMap(["id", text("a1")], ["amount", uint(5)], [key, pollution]))
        : cborMap(["id", text("a1")], ["amount", uint(5)], [nestedIn, wrap(cborMap([key, pollution]))]);
    return { kind, data, expect: nestedIn === "tag" ? ErrorCode.SchemaViolation : "commit" };
  });

const oddNumbers = [
  Number.NaN,
  Number.POSITIVE_INFINITY,
  Number.NEGATIVE_INFINITY,
  -0,
  2 ** 53 + 2,
  Number.MAX_VALUE,
  Number.MIN_VALUE,
  2n ** 63n,
  2n ** 64n,
  -(2n ** 64n) - 1n,
  2n ** 200n,
];
const numbers = fc
  .record({ field: fc.constantFrom("amount", "score", "extra"), value: fc.constantFrom(...oddNumbers) })
  .map(({ field, value }): Spec => {
    const bad = field === "amount" && (typeof value === "bigint" || !Number.isFinite(value) || value > 1e9);
    return {
      kind: `number-${field}`,
      data: encodeRecord({ id: "a1", amount: 1, [field]: value }),
      expect: bad ? "dead" : "any",
    };
  });
/** Bignums written by hand: tag 2 (and 3, negative) over byte strings of any length. */
const bignums = fc
  .record({
    bytes: fc.uint8Array({ minLength: 0, maxLength: 2_048 }),
    negative: fc.boolean(),
    field: fc.constantFrom("amount", "score", "extra"),
  })
  .map(
    ({ bytes, negative, field }): Spec => ({
      kind: `bignum-${field}`,
      data: cborMap(
        ["id", text("a1")],
        ["amount", uint(1)],
        [field, tagged(negative ? 3 : 2, byteString(bytes))],
      ),
      expect:
        bytes.length > MAX_BIGNUM_BYTES ? ErrorCode.UndecodablePayload : field === "amount" ? "dead" : "any",
    }),
  );

const missingId = fc.constantFrom<string | null>(null, "", "   ", "\t").map(
  (id): Spec => ({
    kind: "missing-id",
    data: encodeRecord({ id: "a1", amount: 1 }),
    id,
    expect: ErrorCode.MissingId,
  }),
);
const otherShard = fc.record({ key: fc.constantFrom(...otherKeys), viaHeader: fc.boolean() }).map(
  ({ key, viaHeader }): Spec => ({
    kind: "other-shard",
    data: encodeRecord({ id: "a1", amount: 1 }),
    ...(viaHeader ? { headers: { "Sluice-Key": key } } : { key }),
    expect: ErrorCode.KeyShardMismatch,
  }),
);
const badSchemaId = fc
  .oneof(
    fc.string({ maxLength: 20 }).filter((s) => !/^\s*\d{1,15}\s*$/.test(s)),
    fc.constantFrom(
      "99999999999999999999",
      "1e3",
      "-1",
      "0x1",
      "1.0",
      "0",
      "999999999999999",
      "\ud800",
      "\ufffd",
    ),
    fc.constant("other"),
  )
  .map(
    (id): Spec => ({
      kind: "bad-schema-id",
      data: encodeRecord({ id: "a1", amount: 1 }),
      headers: { "Sluice-Schema-Id": id === "other" ? String(schemaIds.other) : id },
      expect: ErrorCode.SchemaViolation,
    }),
  );
/** Header values no UTF-8 decoder would produce (lone surrogates), and controls, as a source may hand them over. */
const oddHeaderValue = fc.constantFrom("\ud800", "a\udfffb", "\ufffd", "\u0000", "x\r\ny", " \u00a0 ", "é");
const oddHeaders = fc
  .record({
    name: fc.constantFrom("Nats-Msg-Id", "Sluice-Key", "Content-Type", "Sluice-Schema-Id"),
    value: oddHeaderValue,
  })
  .map(({ name, value }): Spec => {
    const data = encodeRecord({ id: "a1", amount: 1 });
    return name === "Nats-Msg-Id"
      ? { kind: "odd-header", data, id: value, expect: "any" }
      : { kind: "odd-header", data, headers: { [name]: value }, expect: "any" };
  });
/** Replayed dead letters: the record id is `Sluice-Record-Id`, read only for a `replay-` message id. */
const replays = fc.oneof(fc.constant(undefined), oddHeaderValue, fc.constantFrom("orig-1", "   ")).map(
  (recordId): Spec => ({
    kind: "replay",
    data: encodeRecord({ id: "a1", amount: 1 }),
    id: "replay-orders-7",
    ...(recordId === undefined ? {} : { headers: { "Sluice-Record-Id": recordId } }),
    expect: "commit",
  }),
);
const unreadableHeaders = fc.constantFrom("invalid header name", "bad\u0000").map(
  (why): Spec => ({
    kind: "header-error",
    data: encodeRecord({ id: "a1", amount: 1 }),
    headerError: why,
    expect: ErrorCode.MissingId,
  }),
);

const A1 = ["id", text("a1")] as [string, Uint8Array];
const AMOUNT = ["amount", uint(5)] as [string, Uint8Array];
/** A map key that is no property name: an object whose `toString` and `valueOf` are not functions. */
const BAD_KEY = cborMap(["toString", uint(1)], ["valueOf", uint(1)]);
const odd = (kind: string, data: Uint8Array, expect: Expect = "any"): Spec => ({ kind, data, expect });
const UNDECODABLE = ErrorCode.UndecodablePayload;

/** CBOR a producer's encoder would not write: tags cbor-x decodes to objects of its own, cycles, records. */
const oddCborSpecs: Spec[] = [
  // Generic objects (tag 27): a RegExp, one that does not compile, an Error.
  odd("regexp", recordWith(tagged(27, cborArray(text("RegExp"), text("a+"), text("g"))))),
  odd("regexp-invalid", recordWith(tagged(27, cborArray(text("RegExp"), text("("), text("")))), UNDECODABLE),
  odd("error", recordWith(tagged(27, cborArray(text("Error"), text("boom"), cborMap(["cause", uint(1)]))))),
  // A cycle and a shared value (tags 28, 29), packed values (51, 6).
  odd("cycle", tagged(28, cborMap(A1, AMOUNT, ["extra", tagged(29, uint(0))])), UNDECODABLE),
  odd("shared", recordWith(cborArray(tagged(28, text("s")), tagged(29, uint(0)))), UNDECODABLE),
  odd("shared-ref-only", recordWith(tagged(29, uint(0))), UNDECODABLE),
  odd(
    "packed",
    tagged(
      51,
      cborArray(
        cborArray(),
        cborArray(),
        cborArray(cborMap(["polluted", TRUE])),
        cborMap(A1, AMOUNT, ["extra", tagged(6, uint(0))]),
      ),
    ),
    UNDECODABLE,
  ),
  // A set (258); maps (259) with keys that are not text, and keys that are no property names.
  odd("set", recordWith(tagged(258, cborArray(uint(1), uint(2))))),
  odd(
    "map-odd-keys",
    tagged(259, cborMap([uint(7), uint(1)], [cborMap(["toString", uint(1)]), uint(2)], A1, AMOUNT)),
    UNDECODABLE,
  ),
  odd("map-bad-key", tagged(259, cborMap([BAD_KEY, uint(2)], A1, AMOUNT)), UNDECODABLE),
  odd("map-bad-key-in-array", tagged(259, cborMap([cborArray(BAD_KEY), uint(2)], A1, AMOUNT)), UNDECODABLE),
  odd("nested-map-bad-key", recordWith(tagged(259, cborMap([BAD_KEY, uint(2)]))), UNDECODABLE),
  // Dates (0, 1) that are no date, typed arrays (64+), one of a length its type does not divide.
  odd("date-text", recordWith(tagged(0, text("not a date")))),
  odd("date-huge", recordWith(tagged(1, cat(Uint8Array.of(0xfb), new Uint8Array(8).fill(0x7f))))),
  odd("float32-array-odd-length", recordWith(tagged(85, byteString(Uint8Array.of(1, 2, 3))))),
  odd("float64-array", recordWith(tagged(86, byteString(new Uint8Array(16))))),
  // Decimal fractions (4) and bigfloats (5) with a bignum mantissa; bignums over other than bytes.
  odd(
    "decimal-fraction",
    recordWith(tagged(4, cborArray(uint(3), tagged(2, byteString(new Uint8Array(40).fill(0xff)))))),
  ),
  odd(
    "bigfloat",
    recordWith(tagged(5, cborArray(uint(3), tagged(2, byteString(new Uint8Array(40).fill(0xff)))))),
  ),
  odd("bignum-of-text", recordWith(tagged(2, text("not bytes"))), UNDECODABLE),
  odd("bignum-of-array", recordWith(tagged(2, cborArray(uint(1), uint(2)))), UNDECODABLE),
  odd(
    "bignum-of-floats",
    recordWith(tagged(3, tagged(86, byteString(Uint8Array.of(0, 0, 0, 0, 0, 0, 0xf0, 0x3f))))),
    UNDECODABLE,
  ),
  odd("unknown-tag", recordWith(tagged(40_000, uint(1)))),
  // undefined, a simple value, an indefinite-length map, keys that are not text.
  odd("undefined", recordWith(Uint8Array.of(0xf7))),
  odd("simple-value", recordWith(Uint8Array.of(0xf0)), UNDECODABLE),
  odd(
    "indefinite-map",
    cat(Uint8Array.of(0xbf), text("id"), text("a1"), text("amount"), uint(5), Uint8Array.of(0xff)),
    "commit",
  ),
  odd("number-key", cborMap(A1, AMOUNT, [uint(1), TRUE]), "commit"),
  odd("bytes-key", cborMap(A1, AMOUNT, [byteString(Uint8Array.of(1)), TRUE]), UNDECODABLE),
  odd("map-key", cborMap(A1, AMOUNT, [cborMap(["x", uint(1)]), TRUE]), UNDECODABLE),
  // cbor-x records (tags 0xdfff and 105), `__proto__` among their keys, enough of them to be compiled.
  odd(
    "records",
    recordsEncoder.encode({
      id: "a1",
      amount: 5,
      extra: Array.from({ length: 6 }, () => JSON.parse('{"__proto__":{"polluted":true},"constructor":1}')),
    }),
    "commit",
  ),
  odd(
    "legacy-record",
    recordWith(
      tagged(
        105,
        cborArray(
          uint(0xe000),
          cborArray(text("__proto__"), text("x")),
          cborMap(["polluted", TRUE]),
          uint(1),
        ),
      ),
    ),
  ),
  // Not a map at all.
  odd("uint", uint(1), ErrorCode.NotAMap),
  odd("text", text("a string"), ErrorCode.NotAMap),
  odd("array", cborArray(cborMap(A1)), ErrorCode.NotAMap),
  odd("null", Uint8Array.of(0xf6), ErrorCode.NotAMap),
];
const oddCbor = fc.constantFrom(...oddCborSpecs);

/** Value-sharing DAGs: a few bytes that expand to 2^depth leaves when walked or rendered. */
const sharedDags = fc.integer({ min: 8, max: 40 }).map(
  (depth): Spec => ({
    kind: "shared-dag",
    data: recordWith(sharedDag(depth)),
    expect: ErrorCode.UndecodablePayload,
  }),
);

/** NATS header blocks: well formed, with invalid UTF-8 in names or values, or malformed lines. */
const headerLine = fc.oneof(
  fc
    .constantFrom(
      "Nats-Msg-Id: id-ok",
      "Nats-Msg-Id: replay-orders-7",
      "Sluice-Record-Id: orig-1",
      "Sluice-Key: k1",
      "Content-Type: application/json",
      "Sluice-Schema-Id: 1",
      "Bad Name: x",
      "no colon",
      ":",
      "",
    )
    .map((s) => enc.encode(s)),
  fc
    .tuple(
      fc.constantFrom(
        "Nats-Msg-Id",
        "Sluice-Key",
        "Content-Type",
        "Sluice-Schema-Id",
        "Sluice-Record-Id",
        "X-Other",
      ),
      fc.constantFrom(": ", ":", ":\t"),
      fc.oneof(
        fc.uint8Array({ maxLength: 12 }),
        fc
          .constantFrom([0xff], [0xc3, 0x28], [0xe2, 0x82], [0xed, 0xa0, 0x80], [0x0d], [0x0a], [0x00])
          .map((b) => Uint8Array.from(b)),
      ),
    )
    .map(([n, sep, v]) => cat(enc.encode(n + sep), v)),
  fc.uint8Array({ maxLength: 16 }).map((b) => cat(b, enc.encode(": v"))),
);
const headerBlock = fc.oneof(
  fc
    .tuple(
      fc.constantFrom("NATS/1.0", "NATS/1.0 100 Idle Heartbeat", "NATS/1.0 503", "", "\u00ff"),
      fc.array(headerLine, { maxLength: 6 }),
      fc.constantFrom("\r\n\r\n", "\r\n", "", "\n", "\r"),
    )
    .map(([status, lines, end]) => {
      const crlf = enc.encode("\r\n");
      return cat(enc.encode(status), ...lines.flatMap((l) => [crlf, l]), enc.encode(end));
    }),
  fc.uint8Array({ maxLength: 48 }),
);
const jetStreamRecords = fc
  .tuple(headerBlock, fc.oneof(validValue.map(encodeRecord), fc.uint8Array({ maxLength: 32 })))
  .map(([block, data]): Spec => ({ kind: "jetstream", data, block, expect: "any" }));

const anyRecord: fc.Arbitrary<Spec> = fc.oneof(
  { arbitrary: validCbor, weight: 4 },
  { arbitrary: validJson, weight: 2 },
  validWithSchemaId,
  { arbitrary: randomBytes, weight: 3 },
  { arbitrary: truncatedCbor, weight: 2 },
  invalidJson,
  invalidUtf8Json,
  deepValue,
  longString,
  { arbitrary: protoKeys, weight: 2 },
  { arbitrary: numbers, weight: 2 },
  bignums,
  missingId,
  otherShard,
  badSchemaId,
  oddHeaders,
  replays,
  unreadableHeaders,
  { arbitrary: oddCbor, weight: 3 },
  sharedDags,
  { arbitrary: jetStreamRecords, weight: 3 },
);

// ---------------------------------------------------------------------------------------------
// Running batches through the committer and checking what became of every record.

const prototypeKeys = (): string[] =>
  [Object.prototype, Array.prototype, Map.prototype].flatMap((p) => Reflect.ownKeys(p).map(String)).sort();
const prototypeBefore = prototypeKeys();

function expectNoPollution(): void {
  const probe = {} as Record<string, unknown>;
  expect(probe.polluted).toBeUndefined();
  expect(probe.x).toBeUndefined();
  expect(prototypeKeys()).toEqual(prototypeBefore);
  expect(Object.getPrototypeOf(Object.prototype)).toBeNull();
  expect(Object.getPrototypeOf(probe)).toBe(Object.prototype);
  expect({}.constructor).toBe(Object);
}

interface Shard {
  sink: MemorySink;
  dead: DeadLetter[];
  committer: BatchCommitter;
}

async function openShard(): Promise<Shard> {
  const sink = new MemorySink({ now: () => 0 });
  const dead: DeadLetter[] = [];
  const chain = new StageChain(decodeStage, await stagesReady);
  const committer = new BatchCommitter(
    REF,
    1,
    "w1",
    sink,
    { publish: async (d) => void dead.push(...d) },
    chain,
    new HistoryGuard(REF, 1, 120_000, (from) => sink.recordIds(REF, from)),
    { leaseFresh: () => true, now: () => 0, shards: SHARDS },
  );
  committer.start(await sink.fence(REF, 1));
  return { sink, dead, committer };
}

const feed = { ack: () => undefined } as unknown as ShardFeed;

/**
 * Commits `specs` as one batch from sequence `from` on, then checks that every record was
 * committed or dead-lettered once, with a known code, as expected, and the checkpoint reached
 * the batch's end. Returns the next free sequence.
 */
async function commitAndCheck(shard: Shard, specs: readonly Spec[], from: number): Promise<number> {
  const batch = specs.map((s, i) => toMessage(s, from + i));
  const storedBefore = shard.sink.stored.length;
  const deadBefore = shard.dead.length;
  const result = await shard.committer.commit(feed, batch);
  expect(result).toMatchObject({ ok: true });
  const stored = shard.sink.stored.slice(storedBefore).map((r) => r.sourceSeq);
  const dead = shard.dead.slice(deadBefore);
  for (const d of dead) {
    expect(d.code, `dead letter ${d.seq}: ${d.message}`).toBeTruthy();
    expect(CODES.has(d.code), `dead letter ${d.seq}: unknown code ${d.code}`).toBe(true);
    expect(typeof d.message).toBe("string");
  }
  const deadSeqs = dead.map((d) => d.seq);
  specs.forEach((spec, i) => {
    const seq = from + i;
    const committed = stored.filter((s) => s === seq).length;
    const letters = dead.filter((d) => d.seq === seq);
    const what = `record ${seq} (${spec.kind}): committed ${committed}, dead [${letters.map((d) => `${d.code}: ${d.message.slice(0, 200)}`).join("; ")}]`;
    expect(committed + letters.length, what).toBe(1);
    if (spec.expect === "commit") expect(committed, what).toBe(1);
    else if (spec.expect === "dead") expect(letters.length, what).toBe(1);
    else if (spec.expect !== "any") expect(letters[0]?.code, what).toBe(spec.expect);
  });
  expect(new Set([...stored, ...deadSeqs]).size).toBe(specs.length);
  expect((await shard.sink.checkpoint(REF)).seq).toBe(from + specs.length - 1);
  for (const row of shard.sink.stored.slice(storedBefore)) {
    expect(Object.getPrototypeOf(row.value)).toBe(Object.prototype);
  }
  expectNoPollution();
  return from + specs.length;
}

const followUp = (n: number): Spec[] =>
  Array.from({ length: n }, (_, i) => ({
    kind: "follow-up",
    data: encodeRecord({ id: `after${i}`, amount: i }),
    expect: "commit" as const,
  }));

describe("bad input never crashes a worker", () => {
  it("every record of a batch of mixed bad input is committed or dead-lettered once, and the next batch commits", async () => {
    await stagesReady;
    await fc.assert(
      fc.asyncProperty(fc.array(anyRecord, { minLength: 1, maxLength: 12 }), async (specs) => {
        const shard = await openShard();
        const next = await commitAndCheck(shard, specs, 1);
        await commitAndCheck(shard, followUp(3), next);
      }),
      { numRuns: 150 },
    );
  });

  it("fixed pathological records: 10 000 levels, 1 MiB strings and bignums, exponential DAGs", async () => {
    await stagesReady;
    const big = "a".repeat(MIB);
    const specs: Spec[] = [
      { kind: "deep-cbor-arrays", data: recordWith(nested(10_000, false)), expect: UNDECODABLE },
      { kind: "deep-cbor-maps", data: recordWith(nested(10_000, true)), expect: UNDECODABLE },
      {
        kind: "deep-cbor-top",
        data: cat(Uint8Array.of(0xa1, 0x61, 0x78), nested(10_000, false)),
        expect: UNDECODABLE,
      },
      {
        kind: "deep-json-arrays",
        data: enc.encode(jsonNested(10_000, false)),
        headers: JSON_CT,
        expect: ErrorCode.UndecodablePayload,
      },
      {
        kind: "deep-json-maps",
        data: enc.encode(jsonNested(10_000, true)),
        headers: JSON_CT,
        expect: ErrorCode.UndecodablePayload,
      },
      {
        kind: "deeper-json",
        data: enc.encode(jsonNested(100_000, false)),
        headers: JSON_CT,
        expect: ErrorCode.UndecodablePayload,
      },
      {
        kind: "json-at-max-depth",
        data: enc.encode(jsonNested(MAX_DEPTH - 1, true)),
        headers: JSON_CT,
        expect: "commit",
      },
      {
        kind: "json-past-max-depth",
        data: enc.encode(jsonNested(MAX_DEPTH, false)),
        headers: JSON_CT,
        expect: ErrorCode.UndecodablePayload,
      },
      { kind: "cbor-at-max-depth", data: recordWith(nested(MAX_DEPTH - 1, false)), expect: "commit" },
      {
        kind: "cbor-past-max-depth",
        data: recordWith(nested(MAX_DEPTH, true)),
        expect: ErrorCode.UndecodablePayload,
      },
      { ...longStringSpec(MIB, "id", true), kind: "1mib-id" },
      { ...longStringSpec(MIB, "id", false), kind: "1mib-id-bad" },
      { ...longStringSpec(MIB, "tag", true), kind: "1mib-tag" },
      { ...longStringSpec(MIB, "key", true), kind: "1mib-key" },
      { ...longStringSpec(MIB, "msgId", true), kind: "1mib-msg-id" },
      {
        kind: "1mib-key-header",
        data: encodeRecord({ id: "a1", amount: 1 }),
        headers: { "Sluice-Key": big },
        expect: "any",
      },
      {
        kind: "1mib-json",
        data: enc.encode(JSON.stringify({ id: "a1", amount: 1, tag: big })),
        headers: JSON_CT,
        expect: "commit",
      },
      {
        kind: "1mib-bignum",
        data: recordWith(tagged(2, byteString(new Uint8Array(MIB - 64).fill(0xab)))),
        expect: ErrorCode.UndecodablePayload,
      },
      {
        kind: "1mib-bignum-amount",
        data: cborMap(
          ["id", text("a1")],
          ["amount", tagged(3, byteString(new Uint8Array(MIB - 64).fill(0xab)))],
        ),
        expect: ErrorCode.UndecodablePayload,
      },
      { kind: "dag-30", data: recordWith(sharedDag(30)), expect: ErrorCode.UndecodablePayload },
      { kind: "dag-64", data: recordWith(sharedDag(64)), expect: ErrorCode.UndecodablePayload },
    ];
    const shard = await openShard();
    const next = await commitAndCheck(shard, specs, 1);
    await commitAndCheck(shard, followUp(5), next);
  });
});

describe("CBOR that no sluice producer writes", () => {
  it("each odd value is committed or dead-lettered as expected, in one batch", async () => {
    await stagesReady;
    const shard = await openShard();
    const next = await commitAndCheck(shard, oddCborSpecs, 1);
    await commitAndCheck(shard, followUp(2), next);
  });
});

describe("NATS header blocks", () => {
  it("a JetStream message's header lookups never throw, whatever its header block holds", () => {
    const names = [
      "Nats-Msg-Id",
      "Sluice-Key",
      "Content-Type",
      "Sluice-Schema-Id",
      "Sluice-Record-Id",
      "X-Other",
      "nats-msg-id",
    ];
    fc.assert(
      fc.property(headerBlock, fc.uint8Array({ maxLength: 24 }), fc.nat(1_000), (block, data, seq) => {
        const m = jetStreamMessage(`sluice.in.orders.0.${ownKeys[0]}`, block, data, seq + 1);
        for (const name of names) {
          const v = m.header!(name);
          expect(v === undefined || typeof v === "string").toBe(true);
        }
        expect(typeof m.headers).toBe("object");
        expect(typeof messageFingerprint(m)).toBe("string");
        const r = decodeRecord(m, { shard: REF.shard, shards: SHARDS });
        if (!r.ok) expect(CODES.has(r.code)).toBe(true);
        if (m.headerError !== undefined) expect(r.ok).toBe(false);
      }),
      { numRuns: 1_000 },
    );
  });
});

describe("ShardPipeline with bad input", () => {
  it("keeps pulling and committing after a batch of bad records", async () => {
    const stages = await stagesReady;
    const specs: Spec[] = [
      ...fc.sample(anyRecord, { numRuns: 40, seed: 7 }),
      { kind: "deep-cbor", data: recordWith(nested(10_000, true)), expect: UNDECODABLE },
      { kind: "dag-40", data: recordWith(sharedDag(40)), expect: ErrorCode.UndecodablePayload },
      ...followUp(4),
    ];
    const messages = specs.map((s, i) => toMessage(s, i + 1));
    const sink = new MemorySink({ now: () => 0 });
    const dead: DeadLetter[] = [];
    const source: ShardSource = {
      async open(_ref, _epoch, start) {
        let pos = "seq" in start ? Math.max(0, start.seq - 1) : 0;
        return {
          failure: null,
          async next(max: number, waitMs: number): Promise<SourceMessage[]> {
            const out = messages.slice(pos, pos + max);
            pos += out.length;
            if (out.length === 0) await new Promise((r) => setTimeout(r, Math.min(waitMs, 5)));
            return out;
          },
          ack() {},
          async close() {},
        };
      },
      async removeOlderEpochs() {},
      async remove() {},
    };
    const p = new ShardPipeline(
      REF,
      1,
      "w1",
      { sink, source, deadLetters: { publish: async (d) => void dead.push(...d) } },
      { batchMax: 7, pullWaitMs: 5 },
      { leaseFresh: () => true, now: () => Date.now(), stages, shards: SHARDS },
    );
    await p.acquire();
    const run = p.run();
    const last = messages.length;
    // The run must still be going when the checkpoint reaches the last record: it ends early
    // only with a failed outcome (a stage or commit that threw).
    let ended: unknown = null;
    void run.then((o) => {
      ended = o;
    });
    while (ended === null && (await sink.checkpoint(REF)).seq < last)
      await new Promise((r) => setTimeout(r, 2));
    expect(ended).toBeNull();
    await p.drain();
    expect(await run).toEqual({ type: "failed", reason: "stopped" });
    const seqs = [...sink.stored.map((r) => r.sourceSeq), ...dead.map((d) => d.seq)].sort((a, b) => a - b);
    expect(seqs).toEqual(messages.map((m) => m.seq));
    for (const d of dead) expect(CODES.has(d.code)).toBe(true);
    expect(sink.stored.slice(-4).map((r) => r.recordId)).toEqual(
      specs.slice(-4).map((_, i) => `follow-up-${last - 3 + i}`),
    );
    expectNoPollution();
  });
});
