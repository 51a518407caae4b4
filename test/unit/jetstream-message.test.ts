import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import type { JsMsg } from "@nats-io/jetstream";
import { MsgHdrsImpl } from "@nats-io/transport-node";
import { encode as cborEncode } from "cbor-x";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type AckNumbers,
  JetStreamSourceMessage,
  readAckNumbers,
  readAckTimestampMs,
} from "../../shared/adapters/nats/jetstream-message.js";
import { scanHeaderValues } from "../../shared/adapters/nats/raw-headers.js";
import { messageFingerprint } from "../../shared/contract/codec.js";
import { decodeRecord } from "../../shared/pipeline/stages/decode-stage.js";

const enc = new TextEncoder();

/**
 * nats.js's own message classes, which the worker's fast paths read the internals of: loaded
 * from the installed packages (they are not exported), so that a nats.js upgrade that changes
 * them fails here rather than only slowing the worker down.
 */
const requireHere = createRequire(import.meta.url);
const jetstreamLib = dirname(requireHere.resolve("@nats-io/jetstream"));
const requireJs = createRequire(join(jetstreamLib, "mod.js"));
const { toJsMsg, parseInfo } = requireJs(join(jetstreamLib, "jsmsg.js")) as {
  toJsMsg(m: unknown, ackTimeout?: number): JsMsg;
  parseInfo(s: string): {
    streamSequence: number;
    deliverySequence: number;
    pending: number;
    timestampNanos: number;
  };
};
const { MsgImpl } = requireJs("@nats-io/nats-core/internal") as {
  MsgImpl: new (
    ma: { subject: Uint8Array; reply?: Uint8Array; sid: number; hdr: number; size: number },
    data: Uint8Array,
    publisher: unknown,
  ) => { _headers?: unknown };
};

/** A JsMsg as the consumer hands it over: header block then payload in one buffer, undecoded. */
function jsMsg(opts: {
  block?: string | Uint8Array | null;
  data?: Uint8Array;
  reply?: string;
  subject?: string;
}) {
  const block = typeof opts.block === "string" ? enc.encode(opts.block) : (opts.block ?? null);
  const data = opts.data ?? cborEncode({ a: 1 });
  const raw = new Uint8Array((block?.length ?? 0) + data.length);
  if (block) raw.set(block);
  raw.set(data, block?.length ?? 0);
  const reply = opts.reply ?? "$JS.ACK.SLUICE_IN_demo.demo-s7-e3.1.42.17.1712345678901234567.9";
  const core = new MsgImpl(
    {
      subject: enc.encode(opts.subject ?? "sluice.in.demo.7"),
      reply: enc.encode(reply),
      sid: 1,
      hdr: block ? block.length : -1,
      size: raw.length,
    },
    raw,
    { publish() {} },
  );
  return { core, token: toJsMsg(core, 5_000) };
}

/** What nats.js answers for `name` in `block`, or the error it throws. */
function natsGet(block: Uint8Array, name: string): string | undefined | Error {
  try {
    return MsgHdrsImpl.decode(block).get(name) || undefined;
  } catch (err) {
    return err as Error;
  }
}

/** Asserts the scan agrees with nats.js on `block`, or declines (null) where nats.js throws. */
function expectLikeNats(block: Uint8Array, names: string[]): Array<string | undefined> | null {
  const found = scanHeaderValues(block, block.length, names);
  // A Buffer (what the transport reads into) is rendered natively: the same answer.
  expect(scanHeaderValues(Buffer.from(block), block.length, names)).toEqual(found);
  const nats = names.map((n) => natsGet(block, n));
  if (found === null) return null;
  for (const v of nats) expect(v).not.toBeInstanceOf(Error);
  expect(found.map((v) => v || undefined)).toEqual(nats);
  return found;
}

const NAMES = ["Nats-Msg-Id", "Content-Type"];

describe("scanHeaderValues", () => {
  it("finds both names in one pass, exactly as nats.js does", () => {
    const block = enc.encode(
      "NATS/1.0\r\nNats-Msg-Id: id-1\r\ntraceparent: 00-ab-cd-01\r\nContent-Type: application/json\r\n\r\n",
    );
    expect(expectLikeNats(block, NAMES)).toEqual(["id-1", "application/json"]);
  });

  it("keeps colons inside values and trims the whitespace around them", () => {
    const block = enc.encode("NATS/1.0\r\nNats-Msg-Id: \t a:b:c \t\r\nContent-Type:x\r\n\r\n");
    expect(expectLikeNats(block, NAMES)).toEqual(["a:b:c", "x"]);
  });

  it("matches names case-sensitively, like nats.js's default lookup", () => {
    const block = enc.encode("NATS/1.0\r\nnats-msg-id: lower\r\nNATS-MSG-ID: upper\r\n\r\n");
    expect(expectLikeNats(block, NAMES)).toEqual([undefined, undefined]);
    const mixed = enc.encode("NATS/1.0\r\nnats-msg-id: lower\r\nNats-Msg-Id: exact\r\n\r\n");
    expect(expectLikeNats(mixed, NAMES)).toEqual(["exact", undefined]);
  });

  it("returns the first of several values", () => {
    const block = enc.encode("NATS/1.0\r\nNats-Msg-Id: first\r\nNats-Msg-Id: second\r\n\r\n");
    expect(expectLikeNats(block, NAMES)).toEqual(["first", undefined]);
  });

  it("tells a present empty value from an absent header", () => {
    const block = enc.encode("NATS/1.0\r\nNats-Msg-Id:   \r\n\r\n");
    expect(scanHeaderValues(block, block.length, NAMES)).toEqual(["", undefined]);
    expectLikeNats(block, NAMES);
  });

  it("ignores the status line, lines without a colon and empty lines", () => {
    for (const text of [
      "NATS/1.0 100 Idle Heartbeat\r\nNats-Msg-Id: hb\r\n\r\n",
      "NATS/1.0 503\r\n\r\n",
      "Nats-Msg-Id: only-status\r\n\r\n",
      "NATS/1.0\r\nno colon here\r\n\r\nNats-Msg-Id: after-blank\r\n\r\n",
      "NATS/1.0\r\nNats-Msg-Id: no-final-crlf",
      "NATS/1.0",
      "",
    ]) {
      expectLikeNats(enc.encode(text), NAMES);
    }
  });

  it("reads only up to `end`, leaving the payload after the block alone", () => {
    const block = enc.encode("NATS/1.0\r\nNats-Msg-Id: id-9\r\n\r\n");
    const raw = new Uint8Array([...block, 0xff, 0x0a, 0x0d]);
    expect(scanHeaderValues(raw, block.length, NAMES)).toEqual(["id-9", undefined]);
  });

  it("declines a CR or LF outside a CRLF pair, bytes outside ASCII and names nats.js rejects", () => {
    for (const text of [
      "NATS/1.0\r\nNats-Msg-Id: a\rb\r\n\r\n",
      "NATS/1.0\r\nNats-Msg-Id: a\nb\r\n\r\n",
      "NATS/1.0\r\nNats-Msg-Id: ab\n\r\n",
      "NATS/1.0\nNats-Msg-Id: ab\r\n\r\n",
      "NATS/1.0\r\nNats-Msg-Id: ab\r",
      "NATS/1.0\r\nNats-Msg-Id: idé\r\n\r\n",
      "NATS/1.0\r\nNats-Msg-Id: id\u00a0\r\n\r\n",
      "NATS/1.0\r\nNats-Msg-Id : spaced\r\n\r\n",
      "NATS/1.0\r\nOther Name: x\r\nNats-Msg-Id: ok\r\n\r\n",
      "NATS/1.0\r\nNats-Msg-Id\x7f: del\r\n\r\n",
    ]) {
      const block = enc.encode(text);
      expect(scanHeaderValues(block, block.length, NAMES)).toBeNull();
    }
  });

  it("agrees with nats.js on arbitrary blocks whenever it answers", () => {
    const name = fc.constantFrom("Nats-Msg-Id", "nats-msg-id", "Content-Type", "X", "", "Nats-Msg-Id ", "Ñ");
    const value = fc.oneof(
      fc.string({ maxLength: 8 }),
      fc.constantFrom(" id ", "a:b", "\t", "\u00a0x", "x\r"),
    );
    const line = fc.oneof(
      fc.tuple(name, fc.constantFrom(":", ": ", ":\t"), value).map(([n, s, v]) => `${n}${s}${v}`),
      fc.constantFrom("", "no colon", ":", "\n", "\r"),
    );
    const block = fc
      .tuple(fc.constantFrom("NATS/1.0", "NATS/1.0 100 Idle Heartbeat", ""), fc.array(line, { maxLength: 5 }))
      .map(([status, lines]) => enc.encode(`${[status, ...lines].join("\r\n")}\r\n\r\n`));
    fc.assert(
      fc.property(fc.oneof(block, fc.uint8Array({ maxLength: 48 })), (b) => {
        expectLikeNats(b, NAMES);
      }),
      { numRuns: 2_000 },
    );
  });
});

describe("readAckTimestampMs", () => {
  const ms = (reply: string): number => readAckTimestampMs(enc.encode(reply));

  it("reads whole milliseconds off the nanosecond token, exactly, in both forms", () => {
    expect(ms("$JS.ACK.S.C.1.42.17.1712345678901999999.9")).toBe(1712345678901);
    expect(ms("$JS.ACK._.HASH.S.C.2.42.17.1712345678901234567.0.rnd")).toBe(1712345678901);
    expect(ms("$JS.ACK.S.C.1.42.17.999999.9")).toBe(0);
    expect(ms("$JS.ACK.S.C.1.42.17.1000000.9")).toBe(1);
  });

  it("agrees with parseInfo's timestamp and declines what is no ack subject", () => {
    fc.assert(
      fc.property(fc.bigInt({ min: 0n, max: 4_000_000_000_000_000_000n / 1000n }), (ns) => {
        const reply = `$JS.ACK.S.C.1.2.3.${ns}.4`;
        expect(ms(reply)).toBe(Number(ns / 1_000_000n));
        expect(Math.abs(ms(reply) - Math.floor(parseInfo(reply).timestampNanos / 1e6))).toBeLessThanOrEqual(
          1,
        );
      }),
    );
    for (const reply of ["$JS.ACK.S.C.1.2.3.4", "$JS.ACK.S.C.1.2.3.x5.4", "$JS.ACK.S.C.1.2.3..4", "_INBOX.a"])
      expect(ms(reply)).toBe(-1);
  });
});

describe("readAckNumbers", () => {
  const read = (reply: string): AckNumbers | null => {
    const out = { streamSequence: 0, deliverySequence: 0, pending: 0 };
    return readAckNumbers(enc.encode(reply), out) ? out : null;
  };

  it("reads the 9-token subject nats-server sends and the longer form with domain and hash", () => {
    expect(read("$JS.ACK.S.C.1.42.17.1712345678901234567.9")).toEqual({
      streamSequence: 42,
      deliverySequence: 17,
      pending: 9,
    });
    expect(read("$JS.ACK._.HASH.S.C.2.42.17.1712345678901234567.0.rnd")).toEqual({
      streamSequence: 42,
      deliverySequence: 17,
      pending: 0,
    });
    expect(read("$JS.ACK.dom.HASH.S.C.2.7.8.1.3")).toEqual({
      streamSequence: 7,
      deliverySequence: 8,
      pending: 3,
    });
    expect(read("$JS.ACK.S.C.1.007.8.1.3")?.streamSequence).toBe(7);
  });

  it("declines what nats.js's parseInfo rejects or reads with parseInt", () => {
    for (const reply of [
      "$JS.ACK.S.C.1.2.3.4",
      "$JS.ACK.S.C.1.2.3.4.5.6",
      "$JS.ACK.S.C.1.x.3.4.5",
      "$JS.ACK.S.C.1.2..4.5",
      "$JS.ACK.S.C.1.2.3.4.-5",
      "$JS.ACK.S.C.1.1234567890123456.3.4.5",
      "$JS.ACKS.C.1.2.3.4.5.6",
      "_INBOX.abc",
      "",
    ]) {
      expect(read(reply)).toBeNull();
    }
  });

  it("agrees with parseInfo whenever it answers", () => {
    const num = fc.oneof(
      fc.nat().map(String),
      fc.constantFrom("", "007", "1e3", "12x", "123456789012345678"),
    );
    const reply = fc.oneof(
      fc.tuple(num, num, num).map(([s, d, p]) => `$JS.ACK.S.C.1.${s}.${d}.9.${p}`),
      fc
        .tuple(num, num, num, fc.nat(4))
        .map(([s, d, p, more]) =>
          [`$JS.ACK.dom.h.S.C.1.${s}.${d}.9.${p}`, ...Array<string>(more).fill("x")].join("."),
        ),
    );
    fc.assert(
      fc.property(reply, (r) => {
        const got = read(r);
        if (!got) return;
        const info = parseInfo(r);
        expect(got).toEqual({
          streamSequence: info.streamSequence,
          deliverySequence: info.deliverySequence,
          pending: info.pending,
        });
      }),
      { numRuns: 2_000 },
    );
  });
});

describe("JetStreamSourceMessage", () => {
  it("reads sequences and record headers without decoding nats.js's header map", () => {
    const { core, token } = jsMsg({
      block:
        "NATS/1.0\r\nNats-Msg-Id: id-1\r\ntraceparent: 00-x\r\nContent-Type: application/json\r\nSluice-Key: alice\r\n\r\n",
      data: enc.encode('{"a":1}'),
    });
    const m = new JetStreamSourceMessage(token);
    expect([m.seq, m.deliverySeq, m.pending]).toEqual([42, 17, 9]);
    expect(m.header("Nats-Msg-Id")).toBe("id-1");
    expect(m.header("Sluice-Key")).toBe("alice");
    expect(m.header("Content-Type")).toBe("application/json");
    // The fast path relies on nats.js keeping the block undecoded until `headers` is read.
    expect(core._headers).toBeUndefined();
    const r = decodeRecord(m);
    expect(
      r.ok && {
        recordId: r.record.recordId,
        key: r.record.key,
        sourceSeq: r.record.sourceSeq,
        value: r.record.value,
      },
    ).toEqual({
      recordId: "id-1",
      key: "alice",
      sourceSeq: 42,
      value: { a: 1 },
    });
    expect(core._headers).toBeUndefined();
    expect(m.header("traceparent")).toBe("00-x");
    expect(m.headers).toEqual({
      "Nats-Msg-Id": "id-1",
      traceparent: "00-x",
      "Content-Type": "application/json",
      "Sluice-Key": "alice",
    });
    expect(m.timestampMs).toBe(1712345678901);
  });

  it("answers like nats.js for a message without headers, with odd headers, or already decoded", () => {
    const cases: Array<string | null> = [
      null,
      "",
      "NATS/1.0\r\n\r\n",
      "NATS/1.0\r\nnats-msg-id: lower\r\n\r\n",
      "NATS/1.0\r\nNats-Msg-Id: idé\r\n\r\n",
      "NATS/1.0\r\nNats-Msg-Id:    \r\nContent-Type: Application/JSON; charset=utf-8\r\n\r\n",
      "NATS/1.0\r\nSluice-Key: k1\r\nSluice-Key: k2\r\nNats-Msg-Id: a\r\n\r\n",
    ];
    for (const block of cases) {
      for (const decodedFirst of [false, true]) {
        const { token } = jsMsg({ block });
        if (decodedFirst) void token.headers;
        const m = new JetStreamSourceMessage(token);
        for (const name of ["Nats-Msg-Id", "Sluice-Key", "Content-Type", "nats-msg-id"]) {
          expect(m.header(name)).toBe(token.headers?.get(name) || undefined);
        }
        const plain = {
          seq: m.seq,
          deliverySeq: m.deliverySeq,
          subject: m.subject,
          data: m.data,
          token: null,
        };
        const id = token.headers?.get("Nats-Msg-Id").trim();
        expect(messageFingerprint(m)).toBe(id || messageFingerprint({ ...plain, headers: {} }));
      }
    }
  });

  it("reads a header block nats.js rejects as no headers, with the reason, so the record is dead-lettered", () => {
    const { token } = jsMsg({ block: "NATS/1.0\r\nBad Name: x\r\nNats-Msg-Id: id\r\n\r\n" });
    expect(() => token.headers).toThrow();
    const m = new JetStreamSourceMessage(token);
    expect(m.header("Nats-Msg-Id")).toBeUndefined();
    expect(m.headers).toEqual({});
    expect(m.headerError).toBeTruthy();
    const r = decodeRecord(m);
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.code).toBe("MISSING_ID");
      expect(r.message).toContain("header block unreadable");
    }
    expect(messageFingerprint(m)).toMatch(/^#/);
  });

  it("falls back to nats.js's parseInfo for ack subjects it does not read", () => {
    const { token } = jsMsg({ reply: "$JS.ACK.S.C.1.12x.3.4.5" });
    const m = new JetStreamSourceMessage(token);
    expect([m.seq, m.deliverySeq, m.pending]).toEqual([12, 3, 5]);
    expect(() => new JetStreamSourceMessage(jsMsg({ reply: "_INBOX.abc" }).token)).toThrow();
  });
});
