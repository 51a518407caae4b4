/**
 * The pure parts of `sluice dlq`: `--since`, where and with what a dead letter is replayed, how
 * its record id is read back, how its payload is shown; and the decode stage's reading of a
 * replayed record's id.
 */
import { encode } from "cbor-x";
import { describe, expect, it } from "vitest";
import { parseSince } from "../../nodes/cli/dlq-commands.js";
import {
  entryOf,
  matchesFilter,
  recordIdOfEntry,
  replayHeaders,
  replayMarkerKey,
  replaySubject,
  viewPayload,
} from "../../shared/adapters/nats/dead-letter-store.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import { ErrorCode } from "../../shared/contract/errors.js";
import type { SourceMessage } from "../../shared/contract/ports.js";
import { Buckets, Headers, replayMsgId } from "../../shared/contract/wire.js";
import { decodeRecord } from "../../shared/pipeline/stages/decode-stage.js";

const NOW = Date.parse("2026-06-01T12:00:00Z");

describe("parseSince", () => {
  it("reads a duration back from now, units combined", () => {
    expect(parseSince("30m", NOW)).toBe(NOW - 30 * 60_000);
    expect(parseSince("2h", NOW)).toBe(NOW - 2 * 3_600_000);
    expect(parseSince("1h30m", NOW)).toBe(NOW - 90 * 60_000);
    expect(parseSince("7d", NOW)).toBe(NOW - 7 * 86_400_000);
    expect(parseSince("45s", NOW)).toBe(NOW - 45_000);
    expect(parseSince("500ms", NOW)).toBe(NOW - 500);
    expect(parseSince(" 0s ", NOW)).toBe(NOW);
  });

  it("reads an ISO-8601 time, with or without a clock and zone", () => {
    expect(parseSince("2026-05-01T10:00:00Z", NOW)).toBe(Date.parse("2026-05-01T10:00:00Z"));
    expect(parseSince("2026-05-01T10:00:00.250+02:00", NOW)).toBe(Date.parse("2026-05-01T08:00:00.250Z"));
    expect(parseSince("2026-05-01", NOW)).toBe(Date.parse("2026-05-01T00:00:00Z"));
  });

  it("refuses anything else with INVALID_CONFIG", () => {
    for (const bad of [
      "",
      "30",
      "m",
      "1.5h",
      "-2h",
      "2 h",
      "yesterday",
      "2026-13-45",
      "2026-05-01Tnoon",
      "1y",
    ]) {
      expect(() => parseSince(bad, NOW), bad).toThrow(
        expect.objectContaining({ code: ErrorCode.InvalidConfig }),
      );
    }
  });
});

describe("replaySubject", () => {
  it("is ingest.<P>.<key>, the key the last token of the stored subject", () => {
    expect(replaySubject("demo", "sluice.in.demo.7.alice")).toBe("ingest.demo.alice");
    expect(replaySubject("orders", "sluice.in.orders.0.k-1_x")).toBe("ingest.orders.k-1_x");
  });

  it("is undefined for a subject that is not one of the pipeline's stored subjects", () => {
    expect(replaySubject("demo", undefined)).toBeUndefined();
    expect(replaySubject("demo", "sluice.in.other.7.alice")).toBeUndefined();
    expect(replaySubject("demo", "ingest.demo.alice")).toBeUndefined();
    expect(replaySubject("demo", "sluice.in.demo.x.alice")).toBeUndefined();
    expect(replaySubject("demo", "sluice.in.demo.7")).toBeUndefined();
    expect(replaySubject("demo", "sluice.in.demo.7.")).toBeUndefined();
    expect(replaySubject("demo", "sluice.in.demo.7.a.b")).toBeUndefined();
  });
});

/** The headers `JetStreamDeadLetterQueue` stores for a record published with `own`. */
const dlqHeaders = (own: Record<string, string>, originalId?: string): Record<string, string> => ({
  ...own,
  "Nats-Msg-Id": "dlq-7-42",
  ...(originalId ? { [Headers.originalMsgId]: originalId } : {}),
  [Headers.errorCode]: "UNAVAILABLE",
  [Headers.errorStage]: "enrich",
  [Headers.errorMessage]: "lookup timed out",
  [Headers.sourceSubject]: "sluice.in.demo.7.alice",
  [Headers.sourceSeq]: "42",
  [Headers.shard]: "7",
});

describe("replayHeaders", () => {
  it("keeps the record's own headers, drops the dead-letter and Nats-* ones, names the record and the replay", () => {
    const h = dlqHeaders(
      {
        [Headers.contentType]: "application/json",
        [Headers.key]: "alice",
        "X-Trace": "t1",
        "Nats-TTL": "5s",
      },
      "r-1",
    );
    expect(replayHeaders(h, "demo", 9, "r-1")).toEqual({
      [Headers.contentType]: "application/json",
      [Headers.key]: "alice",
      "X-Trace": "t1",
      [Headers.recordId]: "r-1",
      [Headers.msgId]: "replay-demo-9",
    });
  });

  it("gives every entry its own Nats-Msg-Id and marker key", () => {
    expect(replayMsgId("demo", 9)).toBe("replay-demo-9");
    expect(replayMsgId("demo", 10)).not.toBe(replayMsgId("demo", 9));
    expect(replayMarkerKey("demo", 9)).toBe("demo.9");
    expect(Buckets.dlqReplays).toBe("sluice_dlq_replays");
  });
});

describe("recordIdOfEntry", () => {
  it("is the original Nats-Msg-Id", () => {
    expect(recordIdOfEntry(dlqHeaders({}, "r-1"))).toBe("r-1");
    // Sluice-Record-Id counts only on a replay, as in the decode stage.
    expect(recordIdOfEntry(dlqHeaders({ [Headers.recordId]: "other" }, "r-1"))).toBe("r-1");
  });

  it("is the original record's id when the dead-lettered record was itself a replay", () => {
    expect(recordIdOfEntry(dlqHeaders({ [Headers.recordId]: "r-1" }, "replay-demo-3"))).toBe("r-1");
    expect(recordIdOfEntry(dlqHeaders({}, "replay-demo-3"))).toBe("replay-demo-3");
  });

  it("is undefined for a record that had no id", () => {
    expect(recordIdOfEntry(dlqHeaders({}))).toBeUndefined();
    expect(recordIdOfEntry(dlqHeaders({}, "  "))).toBeUndefined();
  });
});

describe("entryOf and matchesFilter", () => {
  it("reads a stored dead letter's headers into fields", () => {
    const e = entryOf("demo", {
      seq: 5,
      subject: "sluice.dlq.demo.7",
      timeMs: NOW,
      headers: dlqHeaders({}, "r-1"),
    });
    expect(e).toMatchObject({
      pipeline: "demo",
      seq: 5,
      code: "UNAVAILABLE",
      stage: "enrich",
      message: "lookup timed out",
      shard: 7,
      sourceSubject: "sluice.in.demo.7.alice",
      sourceSeq: 42,
      key: "alice",
      recordId: "r-1",
    });
    expect(
      entryOf("demo", { seq: 1, subject: "s", timeMs: 0, headers: dlqHeaders({ [Headers.key]: "bob" }) }).key,
    ).toBe("bob");
    expect(matchesFilter(e, {})).toBe(true);
    expect(matchesFilter(e, { code: "UNAVAILABLE", sinceMs: NOW })).toBe(true);
    expect(matchesFilter(e, { code: "NOT_A_MAP" })).toBe(false);
    expect(matchesFilter(e, { sinceMs: NOW + 1 })).toBe(false);
  });
});

describe("viewPayload", () => {
  const enc = new TextEncoder();

  it("shows a CBOR value as JSON, byte strings as base64", () => {
    expect(viewPayload(encodeRecord({ n: 1, s: "x" }), undefined)).toEqual({
      format: "cbor",
      value: { n: 1, s: "x" },
    });
    expect(viewPayload(encode([1, 2, 3]), undefined)).toEqual({ format: "cbor", value: [1, 2, 3] });
    expect(viewPayload(encode({ b: new Uint8Array([1, 2]) }), undefined)).toEqual({
      format: "cbor",
      value: { b: { $base64: "AQI=" } },
    });
  });

  it("shows JSON as JSON, with or without its content type", () => {
    expect(viewPayload(enc.encode('{"n":"json"}'), "application/json")).toEqual({
      format: "json",
      value: { n: "json" },
    });
    expect(viewPayload(enc.encode('{"n":2}'), undefined)).toEqual({ format: "json", value: { n: 2 } });
  });

  it("previews anything else as hex (64 bytes at most) and base64 (all of it)", () => {
    const garbage = new Uint8Array([0xff, 0xfe, 0x00, 0x13]);
    expect(viewPayload(garbage, undefined)).toEqual({ format: "bytes", hex: "fffe0013", base64: "//4AEw==" });
    expect(viewPayload(enc.encode("{not json"), "application/json").format).toBe("bytes");
    const long = new Uint8Array(200).fill(0xff);
    const v = viewPayload(long, undefined);
    expect(v.format === "bytes" && v.hex.length).toBe(128);
    expect(v.format === "bytes" && Buffer.from(v.base64, "base64").length).toBe(200);
    expect(viewPayload(new Uint8Array(), undefined)).toEqual({ format: "bytes", hex: "", base64: "" });
  });
});

describe("decodeRecord: the id of a replayed record", () => {
  /** A message whose header lookups are counted, as a JetStream message's would cost. */
  function msg(headers: Record<string, string>): { m: SourceMessage; asked: string[] } {
    const asked: string[] = [];
    const m: SourceMessage = {
      seq: 42,
      deliverySeq: 1,
      subject: "sluice.in.demo.7.alice",
      data: encodeRecord({ n: 1 }),
      headers,
      header: (name) => {
        asked.push(name);
        return headers[name];
      },
      token: null,
    };
    return { m, asked };
  }
  const idOf = (headers: Record<string, string>): string | undefined => {
    const r = decodeRecord(msg(headers).m);
    return r.ok ? r.record.recordId : undefined;
  };

  it("is Sluice-Record-Id on a record published by a replay", () => {
    expect(idOf({ [Headers.msgId]: "replay-demo-9", [Headers.recordId]: "r-1" })).toBe("r-1");
    expect(idOf({ [Headers.msgId]: "replay-demo-9", [Headers.recordId]: " r-1 " })).toBe("r-1");
    // Without one (or an empty one), its Nats-Msg-Id.
    expect(idOf({ [Headers.msgId]: "replay-demo-9" })).toBe("replay-demo-9");
    expect(idOf({ [Headers.msgId]: "replay-demo-9", [Headers.recordId]: "" })).toBe("replay-demo-9");
  });

  it("is Nats-Msg-Id on any other record, whose Sluice-Record-Id is never looked up", () => {
    const { m, asked } = msg({ [Headers.msgId]: "r-2", [Headers.recordId]: "ignored" });
    const r = decodeRecord(m);
    expect(r.ok && r.record.recordId).toBe("r-2");
    expect(asked).not.toContain(Headers.recordId);
  });

  it("still needs a Nats-Msg-Id", () => {
    const r = decodeRecord(msg({ [Headers.recordId]: "r-1" }).m);
    expect(!r.ok && r.code).toBe(ErrorCode.MissingId);
  });
});
