/**
 * The normalise stage: each step's semantics and failures, the order of steps, copy-on-write
 * (the input value never changes), `__proto__` safety, keyed pseudonyms, CEL `set` results, and
 * one record failing mid-chain while the rest of its batch passes.
 */
import { createHmac } from "node:crypto";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { encodeRecord } from "../../shared/contract/codec.js";
import { type NormaliseStep, NormaliseStepSchema } from "../../shared/contract/config.js";
import { ErrorCode, isSluiceError } from "../../shared/contract/errors.js";
import type { PipelineRecord, StageDecision } from "../../shared/pipeline/stage.js";
import {
  isoOfMs,
  mask,
  NormaliseStage,
  normaliseStage,
} from "../../shared/pipeline/stages/normalise-stage.js";

function record(seq: number, value: Record<string, unknown>, key = `k${seq}`): PipelineRecord {
  return {
    recordId: `r${seq}`,
    key,
    sourceSeq: seq,
    value,
    message: {
      seq,
      deliverySeq: seq,
      subject: `sluice.in.orders.0.${key}`,
      data: encodeRecord({}),
      headers: { "Nats-Msg-Id": `r${seq}` },
      token: seq,
    },
  };
}

/** Steps as the config would give them (defaults filled by the schema). */
const parse = (steps: unknown[]): NormaliseStep[] => steps.map((s) => NormaliseStepSchema.parse(s));

const KEYS = { PSEUDO_KEY: "k1-secret", OTHER_KEY: "k2-secret" };

function stage(steps: unknown[]): NormaliseStage {
  return new NormaliseStage(parse(steps), { env: KEYS, readKeyFile: (p) => `file:${p}` });
}

/** The decision for one value. */
function one(steps: unknown[], value: Record<string, unknown>, key = "k1"): StageDecision<PipelineRecord> {
  return stage(steps).process([record(1, value, key)])[0]!;
}

/** The value a record leaves with; fails the test when it is rejected. */
function out(steps: unknown[], value: Record<string, unknown>, key = "k1"): Record<string, unknown> {
  const d = one(steps, value, key);
  if (d.kind !== "keep") throw new Error(`expected keep, got ${JSON.stringify(d)}`);
  return d.record.value;
}

/** The rejection message for one value; fails the test when it is kept. */
function failure(steps: unknown[], value: Record<string, unknown>): string {
  const d = one(steps, value);
  if (d.kind !== "reject") throw new Error(`expected reject, got ${JSON.stringify(d)}`);
  expect(d.rejection.code).toBe(ErrorCode.NormaliseFailed);
  return d.rejection.message;
}

describe("normalise: rename, drop, default", () => {
  it("renames, into and out of nested maps, replacing an existing target; absent is a no-op", () => {
    expect(out([{ rename: { from: "a", to: "b" } }], { a: 1, c: 2 })).toEqual({ b: 1, c: 2 });
    expect(out([{ rename: { from: "a", to: "b" } }], { a: 1, b: 9 })).toEqual({ b: 1 });
    expect(out([{ rename: { from: "c.id", to: "customerId" } }], { c: { id: 7, n: "x" } })).toEqual({
      c: { n: "x" },
      customerId: 7,
    });
    expect(out([{ rename: { from: "id", to: "meta.id" } }], { id: 3 })).toEqual({ meta: { id: 3 } });
    expect(out([{ rename: { from: "n", to: "m" } }], { n: null })).toEqual({ m: null });
    const r = record(1, { x: 1 });
    expect(stage([{ rename: { from: "a", to: "b" } }]).process([r])[0]).toEqual({ kind: "keep", record: r });
    expect(failure([{ rename: { from: "a", to: "s.x" } }], { a: 1, s: "text" })).toBe(
      "step 1 (rename a to s.x): s is text, not a map",
    );
  });

  it("drops one field or several, nested too; absent ones are no-ops", () => {
    expect(out([{ drop: "a" }], { a: 1, b: 2 })).toEqual({ b: 2 });
    expect(out([{ drop: ["a", "c.x", "zz", "b.q.r"] }], { a: 1, b: 2, c: { x: 1, y: 2 } })).toEqual({
      b: 2,
      c: { y: 2 },
    });
  });

  it("fills a default when the field is absent or null, not otherwise", () => {
    const steps = [{ default: { field: "currency", value: "EUR" } }];
    expect(out(steps, { a: 1 })).toEqual({ a: 1, currency: "EUR" });
    expect(out(steps, { currency: null })).toEqual({ currency: "EUR" });
    expect(out(steps, { currency: "USD" })).toEqual({ currency: "USD" });
    expect(out(steps, { currency: "" })).toEqual({ currency: "" });
    expect(out([{ default: { field: "m.tags", value: ["a"] } }], {})).toEqual({ m: { tags: ["a"] } });
  });

  it("shares a map default frozen across records, and copies it before writing into it", () => {
    const s = stage([
      { default: { field: "meta", value: { source: "web", n: 1 } } },
      { upper: "meta.source" },
    ]);
    const [a, b] = s.process([record(1, {}), record(2, { meta: { source: "app" } })]);
    expect(a).toMatchObject({ kind: "keep", record: { value: { meta: { source: "WEB", n: 1 } } } });
    expect(b).toMatchObject({ kind: "keep", record: { value: { meta: { source: "APP" } } } });
    const only = stage([{ default: { field: "meta", value: { source: "web" } } }]).process([
      record(3, {}),
    ])[0]!;
    const meta = (only as { record: PipelineRecord }).record.value.meta;
    expect(Object.isFrozen(meta)).toBe(true);
  });
});

describe("normalise: cast", () => {
  const to = (t: string) => [{ cast: { field: "v", to: t } }];

  it("to number: numbers, exact big integers and strict decimal text", () => {
    expect(out(to("number"), { v: "12.50" })).toEqual({ v: 12.5 });
    expect(out(to("number"), { v: "-3e2" })).toEqual({ v: -300 });
    expect(out(to("number"), { v: "+7" })).toEqual({ v: 7 });
    expect(out(to("number"), { v: 4 })).toEqual({ v: 4 });
    expect(out(to("number"), { v: 2n ** 60n })).toEqual({ v: 2 ** 60 });
    expect(failure([{ cast: { field: "amount", to: "number" } }], { amount: "abc" })).toBe(
      'step 1 (cast amount to number): "abc" is not a number',
    );
    for (const bad of ["", " ", " 1", "1 ", "0x10", "1e999", "Infinity", "NaN", ".5", "5.", "1_000", "1,5"])
      expect(failure(to("number"), { v: bad })).toContain("is not a number");
    expect(failure(to("number"), { v: true })).toBe("step 1 (cast v to number): true is not a number");
    expect(failure(to("number"), { v: { a: 1 } })).toBe("step 1 (cast v to number): a map is not a number");
    expect(failure(to("number"), { v: 2n ** 60n + 1n })).toContain("is not exactly a number");
    expect(failure(to("number"), { v: Number.NaN })).toContain("NaN is not a finite number");
  });

  it("to integer: integral values only; digits beyond 2^53 as a big integer", () => {
    expect(out(to("integer"), { v: "42" })).toEqual({ v: 42 });
    expect(out(to("integer"), { v: "-1.0" })).toEqual({ v: -1 });
    expect(out(to("integer"), { v: "1e3" })).toEqual({ v: 1000 });
    expect(out(to("integer"), { v: 5n })).toEqual({ v: 5 });
    expect(out(to("integer"), { v: "12345678901234567890" })).toEqual({ v: 12345678901234567890n });
    expect(out(to("integer"), { v: 2n ** 70n })).toEqual({ v: 2n ** 70n });
    expect(failure(to("integer"), { v: 1.5 })).toBe("step 1 (cast v to integer): 1.5 is not an integer");
    expect(failure(to("integer"), { v: "1.5" })).toContain('"1.5" is not an integer');
    expect(failure(to("integer"), { v: 1e20 })).toContain("beyond ±(2^53 - 1)");
    expect(failure(to("integer"), { v: "1e20" })).toContain("write it in digits");
    expect(failure(to("integer"), { v: "9".repeat(400) })).toContain("beyond the largest integer");
    expect(failure(to("integer"), { v: "" })).toContain("is not an integer");
  });

  it("to boolean: true/false, their text, 1/0", () => {
    for (const [v, b] of [
      [true, true],
      ["true", true],
      [1, true],
      [1n, true],
      [false, false],
      ["false", false],
      [0, false],
    ] as const)
      expect(out(to("boolean"), { v })).toEqual({ v: b });
    for (const bad of ["yes", "TRUE", "1", 2, -1, ""])
      expect(failure(to("boolean"), { v: bad })).toContain("is not a boolean");
  });

  it("to string: scalars in their shortest form; maps and lists fail", () => {
    expect(out(to("string"), { v: 0.1 })).toEqual({ v: "0.1" });
    expect(out(to("string"), { v: 1e21 })).toEqual({ v: "1e+21" });
    expect(out(to("string"), { v: -0 })).toEqual({ v: "0" });
    expect(out(to("string"), { v: 2n ** 64n })).toEqual({ v: "18446744073709551616" });
    expect(out(to("string"), { v: false })).toEqual({ v: "false" });
    expect(out(to("string"), { v: "x" })).toEqual({ v: "x" });
    expect(failure(to("string"), { v: { a: 1 } })).toBe("step 1 (cast v to string): a map has no text form");
    expect(failure(to("string"), { v: [1] })).toBe("step 1 (cast v to string): a list has no text form");
    expect(failure(to("string"), { v: new Uint8Array([1]) })).toContain("bytes has no text form");
  });

  it("leaves an absent or null field as it is, and an unchanged record as the same object", () => {
    expect(out(to("number"), { a: 1 })).toEqual({ a: 1 });
    expect(out(to("number"), { v: null })).toEqual({ v: null });
    const r = record(1, { v: 3 });
    expect(stage(to("number")).process([r])[0]).toEqual({ kind: "keep", record: r });
  });
});

describe("normalise: trim, lower, upper", () => {
  it("apply to text; absent or null is a no-op; anything else fails", () => {
    expect(out([{ trim: "s" }], { s: "  a b \n" })).toEqual({ s: "a b" });
    expect(out([{ lower: "s" }], { s: "ÀBC" })).toEqual({ s: "àbc" });
    expect(out([{ upper: "c.s" }], { c: { s: "straße" } })).toEqual({ c: { s: "STRASSE" } });
    expect(out([{ trim: "s" }], {})).toEqual({});
    expect(out([{ upper: "s" }], { s: null })).toEqual({ s: null });
    expect(failure([{ trim: "s" }], { s: 42 })).toBe("step 1 (trim s): 42 is not text");
    expect(failure([{ lower: "s" }], { s: ["A"] })).toBe("step 1 (lower s): a list is not text");
  });
});

describe("normalise: timestamp", () => {
  const iso = [{ timestamp: { field: "t" } }];
  const ms = [{ timestamp: { field: "t", to: "ms" } }];

  it("reads ISO-8601 text, seconds and milliseconds (numbers or text) into one form", () => {
    expect(out(iso, { t: "2024-01-05T10:00:00+02:00" })).toEqual({ t: "2024-01-05T08:00:00.000Z" });
    expect(out(iso, { t: "2024-01-05 10:00:00.123456Z" })).toEqual({ t: "2024-01-05T10:00:00.123Z" });
    expect(out(iso, { t: "2024-01-05T10:00-0130" })).toEqual({ t: "2024-01-05T11:30:00.000Z" });
    expect(out(iso, { t: "2024-01-05T10:00:00" })).toEqual({ t: "2024-01-05T10:00:00.000Z" }); // UTC
    expect(out(iso, { t: "2024-02-29" })).toEqual({ t: "2024-02-29T00:00:00.000Z" });
    expect(out(iso, { t: 1_700_000_000 })).toEqual({ t: "2023-11-14T22:13:20.000Z" });
    expect(out(iso, { t: 1_700_000_000.5 })).toEqual({ t: "2023-11-14T22:13:20.500Z" });
    expect(out(iso, { t: 1_700_000_000_000 })).toEqual({ t: "2023-11-14T22:13:20.000Z" });
    expect(out(iso, { t: "1700000000" })).toEqual({ t: "2023-11-14T22:13:20.000Z" });
    expect(out(iso, { t: new Date(5) })).toEqual({ t: "1970-01-01T00:00:00.005Z" });
    expect(out(ms, { t: "2023-11-14T22:13:20Z" })).toEqual({ t: 1_700_000_000_000 });
    expect(out(ms, { t: 1_700_000_000 })).toEqual({ t: 1_700_000_000_000 });
    expect(out(ms, { t: 99_999_999_999 })).toEqual({ t: 99_999_999_999_000 }); // below 1e11: seconds
    expect(out(ms, { t: 100_000_000_000 })).toEqual({ t: 100_000_000_000 }); // from 1e11: ms
    expect(out(ms, { t: "0001-01-01T00:00:00Z" })).toEqual({ t: Date.UTC(2001, 0, 1) - 63_113_904_000_000 });
    expect(out(iso, {})).toEqual({});
  });

  it("fails on text that is no valid timestamp, and out of years 0000 to 9999", () => {
    for (const bad of [
      "2024-02-30",
      "2023-02-29",
      "2024-13-01",
      "2024-01-05T24:00:00Z",
      "2024-01-05T10:60Z",
      "2024-01-05T10:00:60Z",
      "2024-01-05T10:00:00+25:00",
      "20240105T100000Z",
      "yesterday",
      "",
      "2024-1-5",
    ])
      expect(failure(iso, { t: bad })).toContain("is not an ISO-8601 timestamp");
    expect(failure(iso, { t: 1e17 })).toBe(
      "step 1 (timestamp t to iso): 100000000000000000 is out of range (years 0000 to 9999)",
    );
    expect(failure(iso, { t: true })).toBe("step 1 (timestamp t to iso): a boolean is not a timestamp");
  });

  it("agrees with Date.parse on generated ISO-8601 text with offsets", () => {
    let seed = 7;
    const next = (n: number): number => {
      seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31;
      return seed % n;
    };
    const pad = (n: number, w = 2) => String(n).padStart(w, "0");
    const s = stage(ms);
    for (let i = 0; i < 2_000; i++) {
      const y = 1 + next(9999);
      const text = `${pad(y, 4)}-${pad(1 + next(12))}-${pad(1 + next(28))}T${pad(next(24))}:${pad(next(60))}:${pad(next(60))}.${pad(next(1000), 3)}${next(2) ? "Z" : `${next(2) ? "+" : "-"}${pad(next(14))}:${pad(next(60))}`}`;
      const expected = Date.parse(text);
      if (!(expected >= -62_167_219_200_000 && expected <= 253_402_300_799_999)) continue;
      expect(s.process([record(i, { t: text })])[0]).toMatchObject({ record: { value: { t: expected } } });
    }
  });
});

describe("normalise: isoOfMs", () => {
  it("writes what Date's toISOString writes, for every year 0000 to 9999", () => {
    const MIN = -62_167_219_200_000;
    const MAX = 253_402_300_799_999;
    for (const ms of [MIN, MAX, 0, -1, 951_782_400_000, 951_868_799_999, 4_107_542_400_000])
      expect(isoOfMs(ms)).toBe(new Date(ms).toISOString());
    fc.assert(
      fc.property(fc.integer({ min: MIN, max: MAX }), (ms) => {
        expect(isoOfMs(ms)).toBe(new Date(ms).toISOString());
      }),
      { numRuns: 20_000 },
    );
  });
});

describe("normalise: redact and pseudonymise", () => {
  it("redacts by dropping, or by masking all but the last characters (never the whole value)", () => {
    expect(out([{ redact: { field: "card", mode: "drop" } }], { card: "4111", a: 1 })).toEqual({ a: 1 });
    expect(out([{ redact: { field: "card", keep: 4 } }], { card: "4111111111111111" })).toEqual({
      card: "************1111",
    });
    expect(out([{ redact: { field: "card", keep: 4 } }], { card: 4111111111111111 })).toEqual({
      card: "************1111",
    });
    expect(out([{ redact: { field: "pin" } }], { pin: "1234" })).toEqual({ pin: "****" });
    expect(out([{ redact: { field: "pin", keep: 4 } }], { pin: "1234" })).toEqual({ pin: "****" });
    expect(out([{ redact: { field: "pin", keep: 4 } }], { pin: null })).toEqual({ pin: null });
    expect(mask("a😀b😀", 2)).toBe("**b😀");
    expect(mask("😀😀😀", 1)).toBe("**😀");
    expect(mask("", 3)).toBe("");
    const msg = failure([{ redact: { field: "card" } }], { card: { number: "4111-secret" } });
    expect(msg).toBe("step 1 (redact card): a map cannot be masked");
  });

  it('pseudonymises with a keyed HMAC-SHA-256: stable, keyed, the same for 42 and "42"', () => {
    const hmac = (key: string, text: string) => createHmac("sha256", key).update(text).digest("hex");
    const byEnv = [{ pseudonymise: { field: "email", keyEnv: "PSEUDO_KEY" } }];
    const a = out(byEnv, { email: "ada@example.org" });
    expect(a.email).toBe(hmac("k1-secret", "ada@example.org"));
    expect(a.email).toMatch(/^[0-9a-f]{64}$/);
    expect(out(byEnv, { email: "ada@example.org" })).toEqual(a);
    expect(
      out([{ pseudonymise: { field: "email", keyEnv: "OTHER_KEY" } }], { email: "ada@example.org" }).email,
    ).not.toBe(a.email);
    expect(out([{ pseudonymise: { field: "email", keyFile: "/keys/p" } }], { email: "x" }).email).toBe(
      hmac("file:/keys/p", "x"),
    );
    expect(out(byEnv, { email: 42 })).toEqual(out(byEnv, { email: "42" }));
    expect(out(byEnv, {})).toEqual({});
    expect(failure(byEnv, { email: ["ada@example.org"] })).toBe(
      "step 1 (pseudonymise email): a list cannot be pseudonymised",
    );
  });

  it("refuses a key it cannot read at construction (INVALID_CONFIG), never naming the key", () => {
    const build = (p: unknown, opts: ConstructorParameters<typeof NormaliseStage>[1]) => {
      try {
        new NormaliseStage(parse([{ trim: "a" }, { pseudonymise: p }]), opts);
      } catch (err) {
        expect(isSluiceError(err, ErrorCode.InvalidConfig)).toBe(true);
        return (err as Error).message;
      }
      throw new Error("expected a throw");
    };
    expect(build({ field: "e", keyEnv: "NOPE" }, { env: {} })).toBe(
      "normalise step 2 (pseudonymise e): environment variable NOPE is not set",
    );
    expect(build({ field: "e", keyEnv: "K" }, { env: { K: "" } })).toBe(
      "normalise step 2 (pseudonymise e): the key in environment variable K is empty",
    );
    const missing = build({ field: "e", keyFile: "/nonexistent/sluice-key" }, {});
    expect(missing).toBe(
      "normalise step 2 (pseudonymise e): cannot read key file /nonexistent/sluice-key (ENOENT)",
    );
    const secret = "hunter2-very-secret";
    const msg = build(
      { field: "e", keyFile: "/k" },
      {
        readKeyFile: () => {
          throw new Error(`bad key ${secret}`);
        },
      },
    );
    expect(msg).not.toContain(secret);
  });
});

describe("normalise: set (CEL)", () => {
  it("computes numbers, text and maps over record and key", () => {
    expect(
      out([{ set: { field: "total", expression: "record.qty * record.price" } }], { qty: 3, price: 2.5 }),
    ).toEqual({
      qty: 3,
      price: 2.5,
      total: 7.5,
    });
    expect(
      out([{ set: { field: "label", expression: 'record.name + "/" + key' } }], { name: "ada" }, "cust-1"),
    ).toEqual({ name: "ada", label: "ada/cust-1" });
    expect(
      out([{ set: { field: "m", expression: "{'a': dyn(1), 'b': dyn({'c': [1, 2]}), 'n': record.name}" } }], {
        name: "x",
      }),
    ).toEqual({ name: "x", m: { a: 1, b: { c: [1, 2] }, n: "x" } });
    // Literals are homogeneous (as in rules): mixed values need dyn().
    expect(out([{ set: { field: "m", expression: "{'a': 1, 'b': 2}" } }], {})).toEqual({ m: { a: 1, b: 2 } });
    expect(() => stage([{ set: { field: "m", expression: "{'a': 1, 'n': record.name}" } }])).toThrow(
      /does not type-check/,
    );
    expect(out([{ set: { field: "n", expression: "9223372036854775807" } }], {})).toEqual({
      n: 9223372036854775807n,
    });
    expect(out([{ set: { field: "n", expression: "7u" } }], {})).toEqual({ n: 7 });
    expect(out([{ set: { field: "n", expression: "size(record.items)" } }], { items: [1, 2] })).toEqual({
      items: [1, 2],
      n: 2,
    });
    expect(out([{ set: { field: "t", expression: "timestamp('2024-01-05T10:00:00Z')" } }], {})).toEqual({
      t: "2024-01-05T10:00:00.000Z",
    });
    expect(out([{ set: { field: "a.b", expression: "record.x > 1" } }], { x: 2 })).toEqual({
      x: 2,
      a: { b: true },
    });
  });

  it("writes a whole record into itself without a cycle", () => {
    const v = out([{ set: { field: "copy", expression: "record" } }, { upper: "s" }], {
      s: "a",
      m: { x: 1 },
    });
    expect(v).toEqual({ s: "A", m: { x: 1 }, copy: { s: "a", m: { x: 1 } } });
  });

  it("does not let a result share a map later steps write into", () => {
    const v = out(
      [
        { rename: { from: "a.x", to: "a.y" } },
        { set: { field: "b", expression: "record.a" } },
        { upper: "a.y" },
      ],
      { a: { x: "v" } },
    );
    expect(v).toEqual({ a: { y: "V" }, b: { y: "v" } });
  });

  it("reads a record with an own constructor key", () => {
    const value = JSON.parse('{"constructor": "c", "n": 2}');
    expect(out([{ set: { field: "m", expression: "record.n * 2.0" } }], value)).toEqual({
      constructor: "c",
      n: 2,
      m: 4,
    });
  });

  it("fails the record on an evaluation error or a value no record holds", () => {
    expect(failure([{ set: { field: "x", expression: "record.missing + 1" } }], {})).toBe(
      "step 1 (set x): expression failed: No such key: missing",
    );
    expect(failure([{ set: { field: "x", expression: "1 / 0" } }], {})).toContain("expression failed");
    expect(failure([{ set: { field: "x", expression: "1.0 / 0.0" } }], {})).toBe(
      "step 1 (set x): expression gave Infinity, not a finite number",
    );
    expect(failure([{ set: { field: "x", expression: "duration('1s')" } }], {})).toContain(
      "which a record cannot hold",
    );
  });

  it("refuses, at construction, an expression that does not parse or type-check", () => {
    const build = (expression: string) => () => stage([{ set: { field: "x", expression } }]);
    expect(build("record.a +")).toThrow(/normalise step 1 \(set x\): expression does not parse/);
    expect(build("recrod.a")).toThrow(/does not type-check/);
    expect(build("key + 1")).toThrow(/does not type-check/);
  });
});

describe("normalise: the chain", () => {
  it("applies steps in order: each sees what the one before left", () => {
    const v = { amount: " 12 " };
    expect(out([{ trim: "amount" }, { cast: { field: "amount", to: "number" } }], v)).toEqual({ amount: 12 });
    expect(failure([{ cast: { field: "amount", to: "number" } }, { trim: "amount" }], v)).toBe(
      'step 1 (cast amount to number): " 12 " is not a number',
    );
    expect(
      out(
        [
          { rename: { from: "qty", to: "quantity" } },
          { default: { field: "quantity", value: 1 } },
          { set: { field: "total", expression: "record.quantity * record.price" } },
          { drop: "price" },
        ],
        { price: 4.0 },
      ),
    ).toEqual({ quantity: 1, total: 4 });
  });

  it("rejects a record failing mid-chain, naming the step, and passes the others", () => {
    const s = stage([
      { trim: "id" },
      { lower: "id" },
      { cast: { field: "amount", to: "number" } },
      { timestamp: { field: "at" } },
    ]);
    const input = [
      record(1, { id: " A ", amount: "1.5", at: 0 }),
      record(2, { id: "B", amount: "abc", at: 0 }),
      record(3, { id: "C", amount: 2, at: "2024-01-05" }),
    ];
    const out1 = s.process(input);
    expect(out1.map((d) => d.kind)).toEqual(["keep", "reject", "keep"]);
    expect(out1[0]).toMatchObject({
      record: { value: { id: "a", amount: 1.5, at: "1970-01-01T00:00:00.000Z" } },
    });
    expect(out1[1]).toEqual({
      kind: "reject",
      rejection: {
        ok: false,
        code: ErrorCode.NormaliseFailed,
        message: 'step 3 (cast amount to number): "abc" is not a number',
      },
    });
    expect(out1[2]).toMatchObject({ record: { value: { id: "c", at: "2024-01-05T00:00:00.000Z" } } });
    // Deterministic: the same batch again gives the same decisions.
    expect(s.process(input)).toEqual(out1);
  });

  it("never changes the input value: copies the top level and only the maps along a written path", () => {
    const value = { a: { x: " v " }, b: { y: 1 }, list: [1], s: "T" };
    const before = structuredClone(value);
    const v = out([{ trim: "a.x" }, { lower: "s" }, { default: { field: "a.z", value: 0 } }], value);
    expect(value).toEqual(before);
    expect(v).toEqual({ a: { x: "v", z: 0 }, b: { y: 1 }, list: [1], s: "t" });
    expect(v.b).toBe(value.b);
    expect(v.list).toBe(value.list);
    expect(v.a).not.toBe(value.a);
  });

  it("reads and writes through Map values of a record", () => {
    const value = {
      m: new Map<unknown, unknown>([
        ["n", "5"],
        [1, "one"],
      ]),
    };
    const v = out([{ cast: { field: "m.n", to: "integer" } }], value);
    expect(v.m).toEqual(
      new Map<unknown, unknown>([
        ["n", 5],
        [1, "one"],
      ]),
    );
    expect(value.m.get("n")).toBe("5");
  });

  it("writes a field named __proto__ as an own property, never a prototype; reads no inherited field", () => {
    const v1 = out([{ set: { field: "__proto__", expression: "{'polluted': true}" } }], {});
    expect(Object.hasOwn(v1, "__proto__")).toBe(true);
    expect(Object.getPrototypeOf(v1)).toBe(Object.prototype);
    const v2 = out([{ default: { field: "__proto__.polluted", value: true } }], {});
    expect(Object.getPrototypeOf(v2)).toBe(Object.prototype);
    expect(Object.getOwnPropertyDescriptor(v2, "__proto__")?.value).toEqual({ polluted: true });
    const v3 = out([{ rename: { from: "a", to: "__proto__" } }, { upper: "__proto__.x" }], { a: { x: "y" } });
    expect(Object.getOwnPropertyDescriptor(v3, "__proto__")?.value).toEqual({ x: "Y" });
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(Object.prototype).not.toHaveProperty("polluted");
    // `constructor` is not a field of every record: absent, so a default fills an own one.
    expect(out([{ cast: { field: "constructor.name", to: "number" } }], {})).toEqual({});
    expect(Object.hasOwn(out([{ default: { field: "constructor", value: 1 } }], {}), "constructor")).toBe(
      true,
    );
    // A decoded record with an own __proto__ key keeps it own through a copy.
    const decoded = JSON.parse('{"__proto__": {"x": 1}, "s": "a"}');
    const v4 = out([{ upper: "s" }, { cast: { field: "__proto__.x", to: "string" } }], decoded);
    expect(Object.getOwnPropertyDescriptor(v4, "__proto__")?.value).toEqual({ x: "1" });
    expect(Object.getPrototypeOf(v4)).toBe(Object.prototype);
  });

  it("exports a factory, and refuses a step it does not know", () => {
    expect(normaliseStage(parse([{ trim: "a" }])).name).toBe("normalise");
    expect(() => new NormaliseStage([{ nope: 1 } as unknown as NormaliseStep])).toThrow(
      /not a normalise step/,
    );
  });

  it("costs little per record (timing printed, not asserted)", () => {
    const s = stage([
      { rename: { from: "amt", to: "amount" } },
      { trim: "id" },
      { lower: "email" },
      { cast: { field: "amount", to: "number" } },
      { default: { field: "currency", value: "EUR" } },
      { timestamp: { field: "at" } },
      { redact: { field: "card", keep: 4 } },
      { pseudonymise: { field: "email", keyEnv: "PSEUDO_KEY" } },
      { set: { field: "total", expression: "record.amount * 2.0" } },
    ]);
    const batch = Array.from({ length: 10_000 }, (_, i) =>
      record(i, {
        id: ` id-${i} `,
        email: `User${i}@Example.org`,
        amt: `${i}.25`,
        at: 1_700_000_000 + i,
        card: "4111111111111111",
        customer: { id: i, name: "x" },
      }),
    );
    s.process(batch.slice(0, 500));
    const t0 = performance.now();
    const decisions = s.process(batch);
    const ms = performance.now() - t0;
    expect(decisions.every((d) => d.kind === "keep")).toBe(true);
    console.log(
      `normalise: 10 000 records x 9 steps in ${ms.toFixed(1)} ms (${((ms * 1000) / 10_000).toFixed(2)} µs/record)`,
    );
  });
});
