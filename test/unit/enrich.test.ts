/**
 * The enrich stage and its reference tables: lookups into a field with the entry's revision as
 * lineage, `onMissing` keep / reject, the table revision pinned with the checkpoint (waiting
 * while the table cannot be read), answers as of the pinned revision from the cache's one-step
 * history or the store's, and a crashed batch decided alike by the shard's next owner.
 */
import { headers } from "@nats-io/transport-node";
import { describe, expect, it } from "vitest";
import { readReferenceFile } from "../../nodes/cli/ref-commands.js";
import { changeOf } from "../../shared/adapters/nats/reference-tables.js";
import { MemorySink } from "../../shared/adapters/sink/memory-sink.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import { type EnrichConfig, parseConfig } from "../../shared/contract/config.js";
import { ErrorCode, isSluiceError, type SluiceError } from "../../shared/contract/errors.js";
import type { ShardRef } from "../../shared/contract/ownership.js";
import type { DeadLetter, SourceMessage } from "../../shared/contract/ports.js";
import { entryAsOf, isReferenceKey, ReferenceCache } from "../../shared/core/reference-cache.js";
import { BatchCommitter } from "../../shared/pipeline/batch-committer.js";
import { HistoryGuard } from "../../shared/pipeline/history-guard.js";
import type { PipelineRecord, StageContext, StageDecision } from "../../shared/pipeline/stage.js";
import { StageChain } from "../../shared/pipeline/stage-chain.js";
import { decodeStage } from "../../shared/pipeline/stages/decode-stage.js";
import { EnrichStage, refStateKey } from "../../shared/pipeline/stages/enrich-stage.js";
import { MemoryReferenceTables } from "../../shared/testkit/memory-reference-tables.js";
import { CrashOnce } from "../kit/crash-once-sink.js";

const REF: ShardRef = { pipeline: "orders", shard: 0 };
const KEY = refStateKey("customers");

const enrich = (e: Record<string, unknown>): EnrichConfig => {
  const s = parseConfig({ pipelines: [{ name: "orders", stages: [{ enrich: e }] }] }).pipelines[0]!
    .stages[0]!;
  if (!("enrich" in s)) throw new Error("not an enrich stage");
  return s.enrich;
};

function message(seq: number, value: unknown): SourceMessage {
  return {
    seq,
    deliverySeq: seq,
    subject: `sluice.in.orders.0.k${seq}`,
    data: encodeRecord(value as Record<string, unknown>),
    headers: { "Nats-Msg-Id": `r${seq}` },
    token: seq,
  };
}

function record(seq: number, value: Record<string, unknown>): PipelineRecord {
  return { recordId: `r${seq}`, key: `k${seq}`, sourceSeq: seq, value, message: message(seq, value) };
}

const ctx = (state: Record<string, number> = {}): StageContext => ({ ref: REF, shards: undefined, state });

type Kept = { kind: "keep"; record: PipelineRecord };
type Rejected = { kind: "reject"; rejection: { code: string; message: string } };

function setup(
  cfg: Record<string, unknown> = { table: "customers", key: "customer_id", into: "customer" },
  opts: { manual?: boolean; history?: number } = {},
) {
  const tables = new MemoryReferenceTables(opts);
  const clock = { t: 0 };
  const stage = new EnrichStage(enrich(cfg), tables, { now: () => clock.t, pinEveryMs: 1_000 });
  const run = async (
    values: Record<string, unknown>[],
    asOf: number,
  ): Promise<StageDecision<PipelineRecord>[]> => [
    ...(await stage.process(
      values.map((v, i) => record(i + 1, v)),
      ctx({ [KEY]: asOf }),
    )),
  ];
  return { tables, stage, clock, run };
}

describe("enrich stage: lookups", () => {
  it("puts the entry into the field, records its revision as lineage, and never changes the record in place", async () => {
    const { tables, run } = setup();
    const r1 = tables.put("customers", "c1", { name: "Ada", tier: "gold" });
    tables.put("customers", "42", { name: "Num" });
    const input = { id: "o1", customer_id: "c1" };
    const [a, b] = await run([input, { customer_id: 42 }], 2);
    expect(a).toMatchObject({
      kind: "keep",
      record: {
        value: { id: "o1", customer_id: "c1", customer: { name: "Ada", tier: "gold" } },
        lineage: { customers: r1 },
      },
    });
    expect(input).toEqual({ id: "o1", customer_id: "c1" });
    // A number looks up its decimal text.
    expect((b as Kept).record.value.customer).toEqual({ name: "Num" });
    // Entries are shared by the records that use them, so they are read-only.
    expect(Object.isFrozen((a as Kept).record.value.customer)).toBe(true);
  });

  it("onMissing keep: the field is null and lineage 0; reject: ENRICH_MISSING naming the value and the pinned revision", async () => {
    const keepIt = setup();
    keepIt.tables.put("customers", "c1", { name: "Ada" });
    const [k] = await keepIt.run([{ customer_id: "nope" }], 1);
    expect(k).toMatchObject({
      kind: "keep",
      record: { value: { customer: null }, lineage: { customers: 0 } },
    });

    const rejectIt = setup({ table: "customers", key: "customer_id", into: "customer", onMissing: "reject" });
    rejectIt.tables.put("customers", "c1", { name: "Ada" });
    const out = await rejectIt.run(
      [
        { customer_id: "nope" },
        {},
        { customer_id: true },
        { customer_id: { x: 1 } },
        { customer_id: "a b" },
        { customer_id: "c1" },
      ],
      1,
    );
    expect(out.map((d) => d.kind)).toEqual(["reject", "reject", "reject", "reject", "reject", "keep"]);
    const msgs = out.slice(0, 5).map((d) => (d as Rejected).rejection);
    for (const m of msgs) expect(m.code).toBe(ErrorCode.EnrichMissing);
    expect(msgs.map((m) => m.message)).toEqual([
      'table "customers" has no entry for customer_id "nope" as of revision 1',
      'table "customers" has no entry for customer_id absent as of revision 1',
      'table "customers" has no entry for customer_id true as of revision 1',
      'table "customers" has no entry for customer_id a map as of revision 1',
      // Text no KV key can be has no entry.
      'table "customers" has no entry for customer_id "a b" as of revision 1',
    ]);
  });

  it("reads the key and sets the field through own properties, copying maps on a dotted path", async () => {
    const { tables, run } = setup({ table: "customers", key: "order.customer", into: "ctx.customer.info" });
    tables.put("customers", "constructor", { odd: true });
    tables.put("customers", "c1", { name: "Ada" });
    const nested = { keep: 1 };
    const input = { order: { customer: "c1" }, ctx: { other: nested } };
    const [a, b, c, d] = await run(
      [
        input,
        { order: {} },
        { order: { customer: "c1" }, ctx: "text" },
        { order: { customer: "c1" }, ctx: null },
      ],
      2,
    );
    expect((a as Kept).record.value).toEqual({
      order: { customer: "c1" },
      ctx: { other: { keep: 1 }, customer: { info: { name: "Ada" } } },
    });
    expect(input.ctx).toEqual({ other: nested });
    // `order.constructor` is not an own property: absent, not Object's constructor.
    expect((b as Kept).record.value).toMatchObject({ ctx: { customer: { info: null } } });
    expect(c).toMatchObject({ kind: "reject", rejection: { code: ErrorCode.EnrichMissing } });
    expect((c as Rejected).rejection.message).toContain(
      'cannot set ctx.customer.info: ctx is "text", not a map',
    );
    expect((d as Kept).record.value).toMatchObject({ ctx: { customer: { info: { name: "Ada" } } } });
  });

  it("a field named __proto__ is set as an own property, never as the prototype", async () => {
    const { tables, run } = setup({ table: "customers", key: "id", into: "__proto__" });
    tables.put("customers", "c1", { polluted: true });
    const [a] = await run([{ id: "c1" }], 1);
    const v = (a as Kept).record.value;
    expect(Object.hasOwn(v, "__proto__")).toBe(true);
    expect(Object.getPrototypeOf(v)).toBe(Object.prototype);
    expect((v as { polluted?: boolean }).polluted).toBeUndefined();
  });

  it("keeps lineage of earlier tables", async () => {
    const { tables, stage } = setup();
    tables.put("customers", "c1", { name: "Ada" });
    const r = { ...record(1, { customer_id: "c1" }), lineage: { products: 7 } };
    const [d] = await stage.process([r], ctx({ [KEY]: 1 }));
    expect((d as Kept).record.lineage).toEqual({ products: 7, customers: 1 });
  });
});

describe("enrich stage: the pinned revision", () => {
  it("waits while the table has no bucket and while it loads, then pins the cache's revision", async () => {
    const { tables, stage, clock } = setup(undefined, { manual: true });
    const waitsFor = (state: Record<string, number> = {}): SluiceError => {
      try {
        stage.pin(ctx(state));
      } catch (err) {
        return err as SluiceError;
      }
      throw new Error("pin did not wait");
    };
    let err = waitsFor();
    expect(isSluiceError(err, ErrorCode.Unavailable) && err.retryable).toBe(true);
    expect(err.message).toContain("no KV bucket sluice_ref_customers");
    expect(err.message).toContain("sluice ref load --table customers");
    tables.put("customers", "c1", { name: "Ada" });
    tables.put("customers", "c2", { name: "Bob" });
    err = waitsFor();
    expect(err.message).toContain("loading");
    let loaded = false;
    const ready = tables
      .table("customers")
      .ready()
      .then(() => (loaded = true));
    expect(loaded).toBe(false);
    tables.sync("customers");
    await ready;
    expect(stage.pin(ctx())).toEqual({ [KEY]: 2 });
    expect(stage.pin(ctx({ [KEY]: 2 }))).toBeNull();
    // A newer revision is pinned at most once per interval...
    tables.put("customers", "c3", { name: "Cy" });
    tables.sync("customers");
    expect(stage.pin(ctx({ [KEY]: 2 }))).toBeNull();
    clock.t += 1_000;
    expect(stage.pin(ctx({ [KEY]: 2 }))).toEqual({ [KEY]: 3 });
    // ...and never one behind what the shard has pinned.
    tables.put("customers", "c4", {});
    tables.put("customers", "c5", {});
    tables.sync("customers");
    expect(stage.pin(ctx({ [KEY]: 4 }))).toBeNull();
    // A pin ahead of this worker's cache (its previous owner's watch was further): wait for it.
    err = waitsFor({ [KEY]: 9 });
    expect(err.retryable).toBe(true);
    expect(err.message).toContain("behind revision 9 pinned");
    expect(() => stage.process([record(1, { customer_id: "c1" })], ctx({ [KEY]: 9 }))).toThrow(/behind/);
  });

  it("an empty table (bucket made, nothing in it) pins revision 0 and finds nothing", async () => {
    const { tables, stage, run } = setup();
    tables.create("customers");
    expect(stage.pin(ctx())).toEqual({ [KEY]: 0 });
    const [d] = await run([{ customer_id: "c1" }], 0);
    expect(d).toMatchObject({
      kind: "keep",
      record: { value: { customer: null }, lineage: { customers: 0 } },
    });
  });

  it("answers as of the pinned revision: updates, creations and deletions after it are not seen", async () => {
    const { tables, run } = setup();
    tables.put("customers", "c1", { v: 1 });
    const gone = tables.put("customers", "gone", { v: 1 });
    const pinned = 2;
    const c1v2 = tables.put("customers", "c1", { v: 2 });
    tables.put("customers", "new", { v: 1 });
    tables.delete("customers", "gone");
    const values = [{ customer_id: "c1" }, { customer_id: "new" }, { customer_id: "gone" }];
    const asOfPin = await run(values, pinned);
    expect(asOfPin.map((d) => (d as Kept).record.value.customer)).toEqual([{ v: 1 }, null, { v: 1 }]);
    expect(asOfPin.map((d) => (d as Kept).record.lineage?.customers)).toEqual([1, 0, gone]);
    const latest = await run(values, 5);
    expect(latest.map((d) => (d as Kept).record.value.customer)).toEqual([{ v: 2 }, { v: 1 }, null]);
    expect((latest[0] as Kept).record.lineage).toEqual({ customers: c1v2 });
  });

  it("older than the two versions the cache keeps: answered by the store, exactly", async () => {
    const { tables, run } = setup();
    tables.put("customers", "c1", { v: 1 });
    tables.put("customers", "c1", { v: 2 });
    tables.put("customers", "c1", { v: 3 });
    // The cache holds v3 (3) and v2 (2): as of 1 only the store knows.
    expect(tables.table("customers").lookup("c1", 1)).toBeUndefined();
    const pending = (await run([{ customer_id: "c1" }], 1))[0] as Kept;
    expect(pending.record.value.customer).toEqual({ v: 1 });
    expect(pending.record.lineage).toEqual({ customers: 1 });
  });

  it("fails the batch (retryable) when even the store no longer holds the answer", async () => {
    const { tables, stage } = setup(undefined, { history: 2 });
    tables.put("customers", "c1", { v: 1 });
    tables.put("customers", "c1", { v: 2 });
    tables.put("customers", "c1", { v: 3 });
    const err = await Promise.resolve(
      stage.process([record(1, { customer_id: "c1" })], ctx({ [KEY]: 1 })),
    ).catch((e: unknown) => e as SluiceError);
    expect(isSluiceError(err, ErrorCode.Unavailable) && err.retryable).toBe(true);
    expect((err as SluiceError).message).toContain('the entry for "c1" as of revision 1 is no longer known');
  });

  it("after a load, snapshot entries know their previous revision only from their writer", async () => {
    const { tables, run } = setup(undefined, { manual: true });
    tables.put("customers", "c1", { v: 1 });
    tables.put("customers", "c1", { v: 2 });
    tables.put("customers", "new", { v: 1 });
    tables.put("customers", "foreign", { v: 1 }, { foreign: true });
    tables.sync("customers");
    const t = tables.table("customers");
    // c1 replaced revision 1, whose value the snapshot does not carry; `new` was new at 3.
    expect(t.lookup("c1", 1)).toBeUndefined();
    expect(t.lookup("new", 2)).toBeNull();
    // A write that did not say what it replaced: unknown before it.
    expect(t.lookup("foreign", 3)).toBeUndefined();
    const out = await run([{ customer_id: "c1" }, { customer_id: "foreign" }], 1);
    expect(out.map((d) => (d as Kept).record.value.customer)).toEqual([{ v: 1 }, null]);
    // After the load the watch delivers every change: a foreign write replaced the cached entry.
    tables.put("customers", "foreign", { v: 2 }, { foreign: true });
    tables.sync("customers");
    expect(t.lookup("foreign", 4)).toEqual({ value: { v: 1 }, revision: 4 });
  });
});

describe("reference cache", () => {
  it("keeps one previous version, only when sure which one a change replaced", () => {
    const c = new ReferenceCache();
    c.apply({ key: "a", revision: 5, value: 1, deleted: false, previous: 2 }, false);
    expect(c.lookup("a", 5)).toEqual({ value: 1, revision: 5 });
    expect(c.lookup("a", 4)).toBeUndefined();
    c.apply({ key: "a", revision: 7, value: 2, deleted: false, previous: 5 }, true);
    expect(c.lookup("a", 6)).toEqual({ value: 1, revision: 5 });
    // A change naming a revision the cache never saw: the state before it is unknown.
    c.apply({ key: "a", revision: 9, value: 3, deleted: false, previous: 8 }, true);
    expect(c.lookup("a", 8)).toBeUndefined();
    expect(c.lookup("a", 7)).toBeUndefined();
    // Older or repeated changes are ignored.
    c.apply({ key: "a", revision: 6, value: 0, deleted: false }, true);
    expect(c.lookup("a", 9)).toEqual({ value: 3, revision: 9 });
    c.apply({ key: "a", revision: 10, value: undefined, deleted: true, previous: 9 }, true);
    expect(c.lookup("a", 10)).toBeNull();
    expect(c.lookup("a", 9)).toEqual({ value: 3, revision: 9 });
    // Written anew after its deletion: `previous` 0 (the bucket held nothing) means new.
    c.apply({ key: "b", revision: 11, value: 1, deleted: false, previous: 0 }, false);
    expect(c.lookup("b", 3)).toBeNull();
    expect(c.lookup("zzz", 11)).toBeNull();
    expect(c.size).toBe(2);
  });

  it("the store's answer: the last change held at or before the revision, else none only if provably new", () => {
    const held = [
      { revision: 4, value: "x", deleted: false, previous: 1 },
      { revision: 8, value: undefined, deleted: true },
      { revision: 9, value: "y", deleted: false, previous: 8 },
    ];
    expect(entryAsOf(held, 5)).toEqual({ value: "x", revision: 4 });
    expect(entryAsOf(held, 8)).toBeNull();
    expect(entryAsOf(held, 20)).toEqual({ value: "y", revision: 9 });
    expect(entryAsOf(held, 3)).toBeUndefined();
    expect(entryAsOf([{ revision: 4, value: "x", deleted: false, previous: 0 }], 3)).toBeNull();
    expect(entryAsOf([], 3)).toBeUndefined();
    // Every change the key ever had is held: none at or before 3 means none then.
    expect(entryAsOf([{ revision: 4, value: "x", deleted: false }], 3, true)).toBeNull();
    expect(entryAsOf([{ revision: 4, value: "x", deleted: false }], 3)).toBeUndefined();
  });

  it("table keys are what a KV key may be", () => {
    for (const k of ["c1", "a.b", "x-y_z/1=2", "42", "-1.5"]) expect(isReferenceKey(k)).toBe(true);
    for (const k of ["", "a b", ".a", "a.", "a..b", "é", "a*", "1e+21"])
      expect(isReferenceKey(k)).toBe(false);
  });

  it("reads a bucket message: key, revision, value, deletion, the writer's previous revision", () => {
    const h = headers();
    h.set("Nats-Expected-Last-Subject-Sequence", "12");
    const m = (subject: string, data: string, hdr = h) => ({
      seq: 20,
      subject,
      headers: hdr,
      data: new TextEncoder().encode(data),
    });
    expect(changeOf("sluice_ref_t", m("$KV.sluice_ref_t.a.b", '{"x":1}'))).toEqual({
      key: "a.b",
      revision: 20,
      value: { x: 1 },
      deleted: false,
      previous: 12,
    });
    const del = headers();
    del.set("KV-Operation", "DEL");
    expect(changeOf("sluice_ref_t", m("$KV.sluice_ref_t.a", "", del))).toMatchObject({ deleted: true });
    expect(changeOf("sluice_ref_t", m("$KV.sluice_ref_t.a", "not json", headers()))).toMatchObject({
      deleted: true,
    });
    expect(changeOf("sluice_ref_t", m("$KV.other.a", "{}"))).toBeNull();
  });
});

describe("sluice ref load files", () => {
  it("reads JSON lines and CSV (a header row, text values) keyed by the key field; the last row for a key wins", () => {
    const jsonl = readReferenceFile(
      '{"id":"c1","n":1}\n\n{"id":2,"n":2}\r\n{"id":"c1","n":3}\n',
      "jsonl",
      "id",
    );
    expect([...jsonl]).toEqual([
      ["c1", { id: "c1", n: 3 }],
      ["2", { id: 2, n: 2 }],
    ]);
    const csv = readReferenceFile(
      '\uFEFFcustomer_id,name,tier\nc1,"Ada, L",gold\nc2,Bob,\n',
      "csv",
      "customer_id",
    );
    expect(csv.get("c1")).toEqual({ customer_id: "c1", name: "Ada, L", tier: "gold" });
    expect(csv.get("c2")).toEqual({ customer_id: "c2", name: "Bob", tier: "" });
  });

  it("names every bad row and writes nothing", () => {
    expect(() => readReferenceFile('{"id":"a"}\nnope\n{"x":1}\n[1]\n{"id":"a b"}\n', "jsonl", "id")).toThrow(
      /nothing was written, 4 bad row\(s\):\nline 2: not JSON.*\nline 3: id is absent.*\nline 4: not an object\nline 5: id "a b" cannot be a table key/s,
    );
    expect(() => readReferenceFile("id,name\nc1,a,extra\n", "csv", "id")).toThrow(/not CSV/);
  });
});

describe("enrich: a crashed batch decided alike by the shard's next owner", () => {
  it("dead-letters the same record again although its entry was written since, then enriches the next batch with it", async () => {
    const tables = new MemoryReferenceTables();
    tables.put("customers", "c1", { name: "Ada" });
    const clock = { t: 0 };
    const cfg = enrich({ table: "customers", key: "customer_id", into: "customer", onMissing: "reject" });
    const memory = new MemorySink();
    const sink = new CrashOnce(memory);
    const dead: DeadLetter[] = [];
    const committer = async (epoch: number) => {
      // Every owner has its own stage and clock, as a new worker would.
      const stage = new EnrichStage(cfg, tables, { now: () => clock.t });
      const cp = await sink.fence(REF, epoch);
      const c = new BatchCommitter(
        REF,
        epoch,
        `w${epoch}`,
        sink,
        { publish: async (d: DeadLetter[]) => void dead.push(...d) },
        new StageChain(decodeStage, [stage]),
        new HistoryGuard(REF, epoch, 120_000, (from) => sink.recordIds(REF, from)),
        { leaseFresh: () => true, now: () => clock.t },
      );
      c.start(cp);
      return c;
    };
    const feed = { ack: () => undefined } as never;
    const batch = [message(1, { customer_id: "c1" }), message(2, { customer_id: "c2" })];
    sink.crash = true;
    expect((await (await committer(1)).commit(feed, batch)).ok).toBe(false);
    expect(dead.map((d) => d.seq)).toEqual([2]);
    // c2 is written, and c1 rewritten twice: only the store still knows c1 as of revision 1.
    tables.put("customers", "c2", { name: "Bob" });
    tables.put("customers", "c1", { name: "Ada 2" });
    tables.put("customers", "c1", { name: "Ada 3" });
    clock.t += 5_000;
    expect((await (await committer(2)).commit(feed, batch)).ok).toBe(true);
    expect(dead.map((d) => [d.seq, d.code])).toEqual([
      [2, ErrorCode.EnrichMissing],
      [2, ErrorCode.EnrichMissing],
    ]);
    expect(memory.stored.map((r) => [r.sourceSeq, r.value.customer, r.lineage])).toEqual([
      [1, { name: "Ada" }, { customers: 1 }],
    ]);
    expect((await memory.checkpoint(REF)).state).toEqual({ [KEY]: 1, deadLetteredThrough: 2 });
    // The next batch pins the table as it is now, in a commit of its own, then decides by it.
    expect((await (await committer(3)).commit(feed, [message(3, { customer_id: "c2" })])).ok).toBe(true);
    expect(memory.stored.at(-1)).toMatchObject({
      sourceSeq: 3,
      value: { customer: { name: "Bob" } },
      lineage: { customers: 2 },
    });
    expect(await memory.checkpoint(REF)).toMatchObject({ seq: 3, state: { [KEY]: 4 } });
  });
});
