import { encode as cborEncode } from "cbor-x";
import { describe, expect, it } from "vitest";
import { encodeRecord, payloadJson, toJsonText } from "../../shared/contract/codec.js";
import {
  allShardKeys,
  describeSink,
  parseConfig,
  pipelineOf,
  redactUrl,
  sinkOf,
} from "../../shared/contract/config.js";
import { ErrorCode, isSluiceError, SluiceError } from "../../shared/contract/errors.js";
import { parseShardKey, shardKey } from "../../shared/contract/ownership.js";
import type { SourceMessage } from "../../shared/contract/ports.js";
import {
  consumerEpoch,
  consumerName,
  consumerPrefix,
  epochConsumer,
  fnv1a32,
  Headers,
  ingestSubject,
  inputStream,
  inputStreamSubjects,
  inputStreams,
  inputStreamTransform,
  keyOfSubject,
  partitionMapping,
  shardConsumerFilter,
  shardFilter,
  shardOf,
  shardSubject,
  subjectMatches,
} from "../../shared/contract/wire.js";
import { decodeRecord } from "../../shared/pipeline/stages/decode-stage.js";

const enc = new TextEncoder();

function msg(over: Partial<SourceMessage> & { data: Uint8Array }): SourceMessage {
  return {
    seq: 42,
    deliverySeq: 1,
    subject: "sluice.in.demo.7.alice",
    headers: { [Headers.msgId]: "id-1" },
    token: null,
    ...over,
  };
}

function expectRejected(r: ReturnType<typeof decodeRecord>, code: ErrorCode): void {
  expect(r.ok).toBe(false);
  if (!r.ok) {
    expect(r.code).toBe(code);
    expect(r.message.length).toBeGreaterThan(0);
  }
}

function expectSluiceError(fn: () => unknown, code: ErrorCode): SluiceError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(SluiceError);
  expect(isSluiceError(caught, code)).toBe(true);
  return caught as SluiceError;
}

describe("fnv1a32 / shardOf", () => {
  it("matches the reference FNV-1a 32-bit vectors", () => {
    expect(fnv1a32("")).toBe(0x811c9dc5);
    expect(fnv1a32("a")).toBe(0xe40c292c);
    expect(fnv1a32("foobar")).toBe(0xbf9cf968);
  });

  it("maps keys to the same shards as nats-server's partition(16)", () => {
    expect(shardOf("alice", 16)).toBe(7);
    expect(shardOf("bob", 16)).toBe(4);
    expect(shardOf("carol", 16)).toBe(2);
    expect(shardOf("k-123", 16)).toBe(11);
  });

  it("hashes the UTF-8 bytes and always yields an unsigned 32-bit value", () => {
    for (const k of ["é", "日本語", "🙂", "x".repeat(1000)]) {
      const h = fnv1a32(k);
      expect(Number.isInteger(h)).toBe(true);
      expect(h).toBeGreaterThanOrEqual(0);
      expect(h).toBeLessThan(2 ** 32);
    }
    // "é" is hashed as its two UTF-8 bytes (0xc3 0xa9), not as the single code unit 0xe9.
    expect(fnv1a32("é")).toBe(0x1e9de8c1);
    expect(fnv1a32("é")).not.toBe(0x6c0b6c44);
  });

  it("shardOf stays within range", () => {
    for (let i = 0; i < 500; i++) {
      const s = shardOf(`k-${i}`, 7);
      expect(s).toBeGreaterThanOrEqual(0);
      expect(s).toBeLessThan(7);
    }
  });
});

describe("wire names", () => {
  it("builds subjects, consumers and the partition mapping", () => {
    expect(ingestSubject("demo", "alice")).toBe("ingest.demo.alice");
    expect(shardSubject("demo", 3, "alice")).toBe("sluice.in.demo.3.alice");
    expect(shardFilter("demo", 3)).toBe("sluice.in.demo.3.*");
    expect(keyOfSubject("sluice.in.demo.3.alice")).toBe("alice");
    const shared = { name: "demo", streams: "shared", shards: 3 } as const;
    const perShard = { name: "demo", streams: "per-shard", shards: 3 } as const;
    expect(inputStream(shared, 2)).toBe("SLUICE_IN_demo");
    expect(inputStreamSubjects(shared, 2)).toBe("ingest.demo.*");
    expect(inputStreamTransform(shared)).toEqual({
      src: "ingest.demo.*",
      dest: "sluice.in.demo.{{partition(3,1)}}.{{wildcard(1)}}",
    });
    expect(shardConsumerFilter(shared, 2)).toBe("sluice.in.demo.2.*");
    expect([...inputStreams(shared)]).toEqual([["SLUICE_IN_demo", [0, 1, 2]]]);
    expect(inputStream(perShard, 2)).toBe("SLUICE_IN_demo_2");
    expect(inputStreamSubjects(perShard, 2)).toBe("sluice.in.demo.2.*");
    expect(inputStreamTransform(perShard)).toBeUndefined();
    expect(shardConsumerFilter(perShard, 2)).toBeUndefined();
    expect([...inputStreams(perShard)]).toEqual([
      ["SLUICE_IN_demo_0", [0]],
      ["SLUICE_IN_demo_1", [1]],
      ["SLUICE_IN_demo_2", [2]],
    ]);
    expect(consumerName("demo", 3, 9)).toBe("demo-s3-e9");
    expect(consumerName("demo", 3, 9).startsWith(consumerPrefix("demo", 3))).toBe(true);
    expect(consumerEpoch("demo", 3, consumerName("demo", 3, 9))).toBe(9);
    expect(consumerEpoch("demo", 3, consumerName("demo", 31, 9))).toBeNull();
    expect(consumerEpoch("demo", 3, "demo-s3-ex")).toBeNull();
    // Candidates created to land the consumer on the stream leader belong to the same epoch.
    expect(consumerName("demo", 3, 9, 2)).toBe("demo-s3-e9-c2");
    expect(consumerEpoch("demo", 3, consumerName("demo", 3, 9, 2))).toBe(9);
    expect(consumerEpoch("demo", 3, "demo-s3-e9-x2")).toBeNull();
    const byName = new Map([
      [consumerName("demo", 3, 8), "old"],
      [consumerName("demo", 3, 9, 4), "kept"],
    ]);
    expect(epochConsumer(byName, "demo", 3, 9)).toEqual({ name: "demo-s3-e9-c4", value: "kept" });
    expect(epochConsumer(byName, "demo", 3, 10)).toBeUndefined();
    expect(partitionMapping("demo", 16)).toEqual([
      "ingest.demo.*",
      "sluice.in.demo.{{partition(16,1)}}.{{wildcard(1)}}",
    ]);
  });

  it("matches subjects by NATS rules", () => {
    expect(subjectMatches("sluice.in.demo.3.*", "sluice.in.demo.3.alice")).toBe(true);
    expect(subjectMatches("sluice.in.demo.3.*", "sluice.in.demo.31.alice")).toBe(false);
    expect(subjectMatches("sluice.in.demo.3.*", "sluice.in.demo.3")).toBe(false);
    expect(subjectMatches("sluice.in.demo.3.*", "sluice.in.demo.3.a.b")).toBe(false);
    expect(subjectMatches("sluice.>", "sluice.in")).toBe(true);
    expect(subjectMatches("sluice.>", "sluice")).toBe(false);
    expect(subjectMatches("a.b", "a.b")).toBe(true);
  });

  it("shardKey and parseShardKey round-trip, including dotted pipelines", () => {
    expect(shardKey({ pipeline: "demo", shard: 5 })).toBe("demo.5");
    expect(parseShardKey("demo.5")).toEqual({ pipeline: "demo", shard: 5 });
    expect(parseShardKey("a.b.12")).toEqual({ pipeline: "a.b", shard: 12 });
    expect(parseShardKey("demo")).toBeUndefined();
    expect(parseShardKey(".3")).toBeUndefined();
    expect(parseShardKey("demo.-1")).toBeUndefined();
    expect(parseShardKey("demo.1.5x")).toBeUndefined();
  });
});

describe("decodeRecord", () => {
  it("decodes a CBOR map made by encodeRecord", () => {
    const data = encodeRecord({ name: "alice", n: 3, nested: { ok: true } });
    const r = decodeRecord(msg({ data }));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.record.recordId).toBe("id-1");
    expect(r.record.key).toBe("alice");
    expect(r.record.sourceSeq).toBe(42);
    // The record carries its decoded value on to the stages and the sink, which renders it.
    expect(r.record.value).toEqual({ name: "alice", n: 3, nested: { ok: true } });
    expect(JSON.parse(payloadJson(r.record.value))).toEqual({ name: "alice", n: 3, nested: { ok: true } });
  });

  it("rejects a map that decodes but cannot be rendered, so no sink is handed one", () => {
    // {"x": Map {{toString: 1, valueOf: 1}: 2}} (tag 259): a key JSON cannot name.
    const badKey = Buffer.from("a16178d90103a1a268746f537472696e67016776616c75654f660102", "hex");
    const r = decodeRecord(msg({ data: badKey }));
    expectRejected(r, ErrorCode.UndecodablePayload);
    expect(!r.ok && r.message).toMatch(/not representable as JSON: Cannot convert object/i);
    // CBOR tags 28/29 (shared references): a map whose value is the map itself is refused by
    // the decoder, as every shared reference is.
    const cyclic = Buffer.from("d81ca16161d81d00", "hex");
    const c = decodeRecord(msg({ data: cyclic }));
    expectRejected(c, ErrorCode.UndecodablePayload);
    expect(!c.ok && c.message).toMatch(/CBOR tag 29 \(shared or packed values\) is not accepted/);
    // What a sink does with a value no decode stage checked: a typed, non-retryable error.
    const self: Record<string, unknown> = {};
    self.self = self;
    expect(() => payloadJson(self)).toThrow(
      expect.objectContaining({ code: ErrorCode.UndecodablePayload, retryable: false }),
    );
  });

  it("decodes JSON when Content-Type is application/json (case-insensitive, with params)", () => {
    const r = decodeRecord(
      msg({
        data: enc.encode('{"a":1,"b":[1,2]}'),
        headers: {
          [Headers.msgId]: "  id-2  ",
          [Headers.key]: "alice",
          [Headers.contentType]: "Application/JSON; charset=utf-8",
        },
      }),
    );
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.record.recordId).toBe("id-2");
    expect(JSON.parse(payloadJson(r.record.value))).toEqual({ a: 1, b: [1, 2] });
  });

  it("reads the payload as JSON only for a Content-Type starting with application/json", () => {
    const json = enc.encode('{"a":1}');
    const cbor = encodeRecord({ a: 1 });
    for (const ct of ["APPLICATION/JSON", "application/json-seq", "application/json;x=y"]) {
      const r = decodeRecord(
        msg({
          data: json,
          headers: { [Headers.msgId]: "id", [Headers.key]: "alice", [Headers.contentType]: ct },
        }),
      );
      expect(r.ok && payloadJson(r.record.value)).toBe('{"a":1}');
    }
    for (const ct of ["", "application/cbor", " application/json", "text/json", "appl\u0130cation/json"]) {
      const r = decodeRecord(
        msg({
          data: cbor,
          headers: { [Headers.msgId]: "id", [Headers.key]: "alice", [Headers.contentType]: ct },
        }),
      );
      expect(r.ok && payloadJson(r.record.value)).toBe('{"a":1}');
      expectRejected(
        decodeRecord(
          msg({
            data: json,
            headers: { [Headers.msgId]: "id", [Headers.key]: "alice", [Headers.contentType]: ct },
          }),
        ),
        ErrorCode.UndecodablePayload,
      );
    }
  });

  it("rejects a record without Nats-Msg-Id (or a blank one) with MISSING_ID", () => {
    expectRejected(decodeRecord(msg({ data: encodeRecord({ a: 1 }), headers: {} })), ErrorCode.MissingId);
    expectRejected(
      decodeRecord(msg({ data: encodeRecord({ a: 1 }), headers: { [Headers.msgId]: "   " } })),
      ErrorCode.MissingId,
    );
  });

  it("takes the key from the subject, as any NATS client publishes it, with no sluice header", () => {
    const r = decodeRecord(msg({ data: encodeRecord({ a: 1 }), subject: "sluice.in.demo.7.bob" }));
    expect(r.ok && r.record.key).toBe("bob");
    expectRejected(
      decodeRecord(msg({ data: encodeRecord({ a: 1 }), subject: "sluice.in.demo.7." })),
      ErrorCode.MissingKey,
    );
  });

  it("checks the key's shard: a subject or Sluice-Key of another shard is KEY_SHARD_MISMATCH", () => {
    const data = encodeRecord({ a: 1 });
    const at = { shard: shardOf("alice", 16), shards: 16 };
    expect(decodeRecord(msg({ data }), at).ok).toBe(true);
    const other = (at.shard + 1) % 16;
    expectRejected(decodeRecord(msg({ data }), { shard: other, shards: 16 }), ErrorCode.KeyShardMismatch);
    // Without the shard read, keys are not checked.
    expect(decodeRecord(msg({ data }), undefined).ok).toBe(true);
    // An optional Sluice-Key names the key to store, if it belongs to the same shard.
    let sameShard = "";
    for (let i = 0; !sameShard; i++) if (shardOf(`k${i}`, 16) === at.shard) sameShard = `k${i}`;
    const h = (key: string) => ({ [Headers.msgId]: "id-1", [Headers.key]: key });
    const kept = decodeRecord(msg({ data, headers: h(sameShard) }), at);
    expect(kept.ok && kept.record.key).toBe(sameShard);
    let otherShard = "";
    for (let i = 0; !otherShard; i++) if (shardOf(`k${i}`, 16) !== at.shard) otherShard = `k${i}`;
    expectRejected(decodeRecord(msg({ data, headers: h(otherShard) }), at), ErrorCode.KeyShardMismatch);
  });

  it("rejects garbage bytes with UNDECODABLE_PAYLOAD", () => {
    expectRejected(
      decodeRecord(msg({ data: new Uint8Array([0xff, 0xff, 0xff]) })),
      ErrorCode.UndecodablePayload,
    );
    expectRejected(decodeRecord(msg({ data: new Uint8Array([0x1c]) })), ErrorCode.UndecodablePayload);
  });

  it("rejects CBOR that is not a map with NOT_A_MAP", () => {
    expectRejected(decodeRecord(msg({ data: cborEncode(12) })), ErrorCode.NotAMap);
    expectRejected(decodeRecord(msg({ data: cborEncode([1, 2, 3]) })), ErrorCode.NotAMap);
    expectRejected(decodeRecord(msg({ data: cborEncode("text") })), ErrorCode.NotAMap);
    expectRejected(decodeRecord(msg({ data: cborEncode(null) })), ErrorCode.NotAMap);
  });

  it("rejects JSON that is not an object with NOT_A_MAP", () => {
    const headers = {
      [Headers.msgId]: "id",
      [Headers.key]: "alice",
      [Headers.contentType]: "application/json",
    };
    expectRejected(decodeRecord(msg({ data: enc.encode("[1,2]"), headers })), ErrorCode.NotAMap);
    expectRejected(decodeRecord(msg({ data: enc.encode("null"), headers })), ErrorCode.NotAMap);
  });

  it("rejects invalid JSON or invalid UTF-8 with a JSON content type as UNDECODABLE_PAYLOAD", () => {
    const headers = {
      [Headers.msgId]: "id",
      [Headers.key]: "alice",
      [Headers.contentType]: "application/json",
    };
    expectRejected(
      decodeRecord(msg({ data: enc.encode("{not json"), headers })),
      ErrorCode.UndecodablePayload,
    );
    expectRejected(
      decodeRecord(msg({ data: new Uint8Array([0x7b, 0xff, 0x7d]), headers })),
      ErrorCode.UndecodablePayload,
    );
  });

  it("turns byte-string values into {$base64}", () => {
    const r = decodeRecord(msg({ data: encodeRecord({ blob: new Uint8Array([1, 2, 3, 250]) }) }));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(JSON.parse(payloadJson(r.record.value))).toEqual({
      blob: { $base64: Buffer.from([1, 2, 3, 250]).toString("base64") },
    });
  });

  it("toJsonText renders bigints as strings and Maps as objects", () => {
    expect(toJsonText({ big: 2n ** 70n })).toBe(`{"big":"${(2n ** 70n).toString()}"}`);
    expect(JSON.parse(toJsonText(new Map<string, unknown>([["a", 1]])))).toEqual({ a: 1 });
  });
});

describe("parseConfig", () => {
  it("defaults to the demo pipeline with 16 shards and default timing", () => {
    const cfg = parseConfig(undefined);
    expect(cfg.pipelines).toEqual([
      {
        name: "demo",
        shards: 16,
        replicas: 3,
        duplicateWindowMs: 120_000,
        streams: "shared",
        durability: "replicated",
        tableMode: "append",
        rules: [],
        stages: [],
      },
    ]);
    expect(cfg.sink).toEqual({ type: "sqlite" });
    expect(cfg.timing.failureTimeoutMs).toBe(1000);
    expect(cfg.timing.leaderTtlMs).toBe(1500);
    expect(cfg.worker).toMatchObject({ batchMax: 1000, batchMin: 16, targetCommitMs: 100, lingerMs: 5 });
    expect(parseConfig({})).toEqual(cfg);
    expect(allShardKeys(cfg)).toHaveLength(16);
    expect(allShardKeys(cfg)[15]).toBe("demo.15");
    expect(pipelineOf(cfg, "demo").shards).toBe(16);
  });

  it("fills pipeline defaults for partial entries", () => {
    const cfg = parseConfig({ pipelines: [{ name: "orders", shards: 4 }] });
    expect(cfg.pipelines[0]).toEqual({
      name: "orders",
      shards: 4,
      replicas: 3,
      duplicateWindowMs: 120_000,
      streams: "shared",
      durability: "replicated",
      tableMode: "append",
      rules: [],
      stages: [],
    });
  });

  it("names a sink per pipeline or for all, refuses upsert into an output stream, never shows a password", () => {
    const cfg = parseConfig({
      sink: { type: "postgres", url: "postgres://app:s3cret@db:5432/ingest", passwordEnv: "PGPASS" },
      pipelines: [
        { name: "a" },
        { name: "b", sink: { type: "jetstream" } },
        { name: "c", tableMode: "upsert" },
      ],
    });
    expect(sinkOf(cfg, cfg.pipelines[0]!)).toMatchObject({ type: "postgres", poolSize: 8 });
    expect(sinkOf(cfg, cfg.pipelines[1]!)).toEqual({ type: "jetstream", replicas: 3 });
    expect(describeSink(cfg.sink)).toBe("postgres postgres://app:***@db:5432/ingest");
    expect(redactUrl("postgres://u:p@h/d")).not.toContain(":p@");
    expectSluiceError(
      () => parseConfig({ sink: { type: "jetstream" }, pipelines: [{ name: "a", tableMode: "upsert" }] }),
      ErrorCode.InvalidConfig,
    );
    expectSluiceError(
      () => parseConfig({ sink: { type: "postgres", url: "mysql://x" } }),
      ErrorCode.InvalidConfig,
    );
  });

  it("rejects duplicate pipeline names with INVALID_CONFIG", () => {
    const err = expectSluiceError(
      () => parseConfig({ pipelines: [{ name: "a" }, { name: "a", shards: 2 }] }),
      ErrorCode.InvalidConfig,
    );
    expect(err.message).toContain("'a'");
  });

  it("rejects invalid names and values with INVALID_CONFIG", () => {
    for (const bad of ["1abc", "has-dash", "has.dot", "", "x".repeat(64), "sp ace"]) {
      expectSluiceError(() => parseConfig({ pipelines: [{ name: bad }] }), ErrorCode.InvalidConfig);
    }
    expectSluiceError(() => parseConfig({ pipelines: [] }), ErrorCode.InvalidConfig);
    expectSluiceError(() => parseConfig({ pipelines: [{ name: "a", shards: 0 }] }), ErrorCode.InvalidConfig);
    expectSluiceError(() => parseConfig({ timing: { failureTimeoutMs: 10 } }), ErrorCode.InvalidConfig);
  });

  it("pipelineOf an unknown pipeline throws INVALID_CONFIG", () => {
    expectSluiceError(() => pipelineOf(parseConfig({}), "nope"), ErrorCode.InvalidConfig);
  });
});
