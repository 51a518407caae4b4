/**
 * The schema and quality-rule stages: their decisions per record, the schema version pinned with
 * the checkpoint (and so judged alike after a crash and a new registration), and the rules'
 * modes, canaries and checks.
 */
import { describe, expect, it } from "vitest";
import { MemorySink } from "../../shared/adapters/sink/memory-sink.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import { parseConfig, type RuleConfig } from "../../shared/contract/config.js";
import { ErrorCode, isSluiceError, SluiceError } from "../../shared/contract/errors.js";
import type { ShardRef } from "../../shared/contract/ownership.js";
import type { DeadLetter, SourceMessage } from "../../shared/contract/ports.js";
import { BatchCommitter } from "../../shared/pipeline/batch-committer.js";
import { HistoryGuard } from "../../shared/pipeline/history-guard.js";
import { pipelineStages } from "../../shared/pipeline/pipeline-stages.js";
import { type RegistryValue, SchemaRegistry } from "../../shared/pipeline/schema-registry.js";
import type { PipelineRecord, StageContext } from "../../shared/pipeline/stage.js";
import { StageChain } from "../../shared/pipeline/stage-chain.js";
import { decodeStage } from "../../shared/pipeline/stages/decode-stage.js";
import { compileRules, inCanary, RulesStage } from "../../shared/pipeline/stages/rules-stage.js";
import { SchemaStage, schemaStateKey } from "../../shared/pipeline/stages/schema-stage.js";
import { MemoryJsonStore } from "../../shared/testkit/memory-broker.js";
import { CrashOnce } from "../kit/crash-once-sink.js";

const REF: ShardRef = { pipeline: "orders", shard: 0 };

const v1 = {
  type: "object",
  properties: { id: { type: "string" }, amount: { type: "number" } },
  required: ["id", "amount"],
};
const v2 = {
  type: "object",
  properties: { ...v1.properties, currency: { type: "string", default: "EUR" } },
  required: ["id", "amount"],
};

function message(seq: number, value: unknown, headers: Record<string, string> = {}): SourceMessage {
  return {
    seq,
    deliverySeq: seq,
    subject: `sluice.in.orders.0.k${seq}`,
    data: encodeRecord(value as Record<string, unknown>),
    headers: { "Nats-Msg-Id": `r${seq}`, ...headers },
    token: seq,
  };
}

function record(
  seq: number,
  value: Record<string, unknown>,
  headers: Record<string, string> = {},
): PipelineRecord {
  return {
    recordId: `r${seq}`,
    key: `k${seq}`,
    sourceSeq: seq,
    value,
    message: message(seq, value, headers),
  };
}

const ctx = (state: Record<string, number> = {}): StageContext => ({ ref: REF, shards: undefined, state });

function setup(): { registry: SchemaRegistry; stage: SchemaStage; clock: { t: number } } {
  const registry = new SchemaRegistry(new MemoryJsonStore<RegistryValue>());
  const clock = { t: 0 };
  const stage = new SchemaStage("orders", registry, { now: () => clock.t, refreshMs: 1_000 });
  return { registry, stage, clock };
}

describe("schema stage", () => {
  it("waits (retryable, no dead letter) while the subject is not registered, then pins its latest version", async () => {
    const { registry, stage, clock } = setup();
    const err = await stage.pin(ctx()).catch((e: unknown) => e);
    expect(isSluiceError(err, ErrorCode.SchemaSubjectMissing)).toBe(true);
    expect((err as SluiceError).retryable).toBe(true);
    await registry.register("orders", v1);
    clock.t += 1_000;
    expect(await stage.pin(ctx())).toEqual({ [schemaStateKey("orders")]: 1 });
    expect(await stage.pin(ctx({ "schema:orders": 1 }))).toBeNull();
    await registry.register("orders", v2);
    // Not read again before the refresh interval: the pin stays, and that is safe.
    expect(await stage.pin(ctx({ "schema:orders": 1 }))).toBeNull();
    clock.t += 1_000;
    expect(await stage.pin(ctx({ "schema:orders": 1 }))).toEqual({ "schema:orders": 2 });
    // Never back: a shard pinned further by another worker keeps its pin.
    expect(await stage.pin(ctx({ "schema:orders": 5 }))).toBeNull();
  });

  it("keeps valid records resolved, rejects invalid ones with the validator's errors, never coerces", async () => {
    const { registry, stage } = setup();
    await registry.register("orders", v1);
    await registry.register("orders", v2);
    await stage.pin(ctx());
    const out = await stage.process(
      [
        record(1, { id: "a", amount: 3 }),
        record(2, { id: "b", amount: "12" }),
        record(3, { amount: 1 }),
        record(4, { id: "d", amount: 2, currency: "USD" }),
      ],
      ctx({ "schema:orders": 2 }),
    );
    expect(out[0]).toMatchObject({
      kind: "keep",
      record: { value: { id: "a", amount: 3, currency: "EUR" } },
    });
    expect(out[1]).toMatchObject({ kind: "reject", rejection: { code: ErrorCode.SchemaViolation } });
    expect((out[1] as { rejection: { message: string } }).rejection.message).toContain(
      "/amount: must be number",
    );
    expect((out[2] as { rejection: { message: string } }).rejection.message).toContain(
      "must have required property 'id'",
    );
    expect(out[3]).toMatchObject({ kind: "keep", record: { value: { currency: "USD" } } });
  });

  it("validates against the writer's version a Sluice-Schema-Id names, then resolves to the pinned one", async () => {
    const { registry, stage } = setup();
    const first = await registry.register("orders", { ...v1, additionalProperties: true });
    const second = await registry.register("orders", { ...v2, additionalProperties: true });
    const third = await registry.register("orders", {
      ...v2,
      properties: { ...v2.properties, note: { type: "string", default: "" } },
      additionalProperties: true,
    });
    await stage.pin(ctx());
    const pinned = ctx({ "schema:orders": 2 });
    const out = await stage.process(
      [
        record(1, { id: "a", amount: 1, extra: true }, { "Sluice-Schema-Id": String(first.id) }),
        record(2, { id: "b" }, { "Sluice-Schema-Id": String(first.id) }),
        record(3, { id: "c", amount: 1 }, { "Sluice-Schema-Id": String(third.id) }),
        record(4, { id: "d", amount: 1 }, { "Sluice-Schema-Id": "x7" }),
        record(5, { id: "e", amount: 1 }, { "Sluice-Schema-Id": String(second.id) }),
      ],
      pinned,
    );
    // Resolved to version 2: the field it does not declare dropped, its default filled.
    expect(out[0]).toMatchObject({
      kind: "keep",
      record: { value: { id: "a", amount: 1, currency: "EUR" } },
    });
    expect((out[0] as { record: PipelineRecord }).record.value).not.toHaveProperty("extra");
    expect((out[1] as { rejection: { message: string } }).rejection.message).toContain("writer's schema");
    // Version 3 is not pinned yet: its id is judged unknown, whatever the registry holds now.
    expect((out[2] as { rejection: { message: string } }).rejection.message).toContain("up to version 2");
    expect((out[3] as { rejection: { message: string } }).rejection.message).toContain("is not a schema id");
    expect(out[4]).toMatchObject({ kind: "keep" });
  });
});

/**
 * A shard whose first attempt at a batch dead-letters a record and crashes before its commit;
 * a version that accepts the record is registered; the shard's next owner reads the batch again,
 * then one more batch.
 */
async function crashThenRegister(deadLetterMark: boolean) {
  const { registry, stage, clock } = setup();
  await registry.register("orders", v1, "NONE");
  const memory = new MemorySink();
  const sink = new CrashOnce(memory);
  const dead: DeadLetter[] = [];
  const dlq = { publish: async (d: DeadLetter[]) => void dead.push(...d) };
  const chain = new StageChain(decodeStage, [stage]);
  const committer = async (epoch: number) => {
    const cp = await sink.fence(REF, epoch);
    const c = new BatchCommitter(
      REF,
      epoch,
      `w${epoch}`,
      sink,
      dlq,
      chain,
      new HistoryGuard(REF, epoch, 120_000, (from) => sink.recordIds(REF, from)),
      { leaseFresh: () => true, now: () => clock.t, deadLetterMark },
    );
    c.start(cp);
    return c;
  };
  const feed = { ack: () => undefined } as never;
  // Valid under version 2 only: `amount` becomes a string.
  const batch = [message(1, { id: "a", amount: 1 }), message(2, { id: "b", amount: "2" })];
  sink.crash = true;
  const first = await (await committer(1)).commit(feed, batch);
  const deadFirst = dead.map((d) => d.seq);
  await registry.register("orders", {
    ...v1,
    properties: { ...v1.properties, amount: { type: ["number", "string"] } },
  });
  clock.t += 5_000;
  const second = await (await committer(2)).commit(feed, batch);
  const afterRedelivery = {
    state: (await memory.checkpoint(REF)).state,
    stored: memory.stored.map((r) => r.sourceSeq),
  };
  const third = await (await committer(3)).commit(feed, [message(3, { id: "c", amount: "3" })]);
  return {
    oks: [first.ok, second.ok, third.ok],
    deadFirst,
    dead: dead.map((d) => d.seq),
    afterRedelivery,
    stored: memory.stored.map((r) => r.sourceSeq),
    checkpoint: await memory.checkpoint(REF),
  };
}

describe("schema version pinned with the checkpoint", () => {
  it("judges a batch redelivered after a new registration by the version its first attempt used", async () => {
    const r = await crashThenRegister(true);
    expect(r.oks).toEqual([false, true, true]);
    expect(r.deadFirst).toEqual([2]);
    // Judged by version 1 again: record 2 dead-lettered (again, under the same id), not committed.
    expect(r.afterRedelivery.stored).toEqual([1]);
    expect(r.dead).toEqual([2, 2]);
    // How far dead letters may reach was recorded before they were published.
    expect(r.afterRedelivery.state).toEqual({ "schema:orders": 1, deadLetteredThrough: 2 });
    // The next batch: version 2 is pinned first, in a commit of its own, then decides.
    expect(r.stored).toEqual([1, 3]);
    expect(r.checkpoint).toMatchObject({ seq: 3, state: { "schema:orders": 2 } });
  });

  it("a shard whose subject is missing decides nothing, waits, and can end its lease without a commit", async () => {
    const { stage, clock } = setup();
    const sink = new MemorySink();
    const dead: DeadLetter[] = [];
    let stopping = false;
    const waits: Array<string | null> = [];
    const c = new BatchCommitter(
      REF,
      1,
      "w1",
      sink,
      { publish: async (d) => void dead.push(...d) },
      new StageChain(decodeStage, [stage]),
      new HistoryGuard(REF, 1, 120_000, (from) => sink.recordIds(REF, from)),
      {
        leaseFresh: () => true,
        now: () => clock.t,
        stopping: () => stopping,
        sleep: async (ms) => {
          clock.t += ms;
          if (waits.length >= 3) stopping = true;
        },
        onStageWait: (r) => waits.push(r.error),
      },
    );
    c.start(await sink.fence(REF, 1));
    const r = await c.commit({ ack: () => undefined } as never, [message(1, { id: "a", amount: "x" })]);
    expect(r).toMatchObject({ ok: false, outcome: { reason: "stopped while a stage waited" } });
    expect(c.waitingForInput).toBe(true);
    expect(waits.length).toBeGreaterThanOrEqual(3);
    expect(waits[0]).toContain('schema subject "orders" is not registered');
    expect(dead).toEqual([]);
    expect(sink.stored).toEqual([]);
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 1, seq: 0 });
  });

  it("without the dead-letter mark, a record is both dead-lettered and committed", async () => {
    const r = await crashThenRegister(false);
    expect(r.deadFirst).toEqual([2]);
    expect(r.stored).toContain(2);
  });
});

const rule = (r: Record<string, unknown>): RuleConfig =>
  parseConfig({ pipelines: [{ name: "orders", rules: [{ name: "r", ...r }] }] }).pipelines[0]!.rules[0]!;

describe("quality rules", () => {
  const check = (r: Record<string, unknown>, value: Record<string, unknown>, key = "k1") =>
    compileRules([rule(r)])[0]!.check(value, key);

  it("checks not-null, ranges, patterns, comparisons and CEL expressions", () => {
    expect(check({ notNull: "customer.id" }, { customer: { id: "c1" } })).toBeNull();
    expect(check({ notNull: "customer.id" }, { customer: { id: null } })).toBe("customer.id is null");
    expect(check({ notNull: "customer.id" }, {})).toBe("customer.id is absent");
    // Own properties only: every object "has" a constructor through its prototype.
    expect(check({ notNull: "constructor" }, {})).toBe("constructor is absent");
    expect(check({ range: { field: "amount", min: 0, max: 10 } }, { amount: 10 })).toBeNull();
    expect(check({ range: { field: "amount", min: 0 } }, { amount: -1 })).toContain("not within [0, ∞]");
    expect(check({ range: { field: "amount", min: 0 } }, { amount: "5" })).toContain("not a number");
    expect(check({ range: { field: "amount", min: 0 } }, { amount: Number.NaN })).toContain("not a number");
    expect(check({ range: { field: "amount", max: 1e30 } }, { amount: 2n ** 64n })).toBeNull();
    expect(check({ pattern: { field: "email", regex: "^[^@]+@[^@]+$" } }, { email: "a@b" })).toBeNull();
    expect(check({ pattern: { field: "email", regex: "^[^@]+@[^@]+$" } }, { email: "ab" })).toContain(
      "does not match",
    );
    expect(
      check({ compare: { left: "shipped", op: ">=", right: "ordered" } }, { shipped: 5, ordered: 3 }),
    ).toBeNull();
    expect(
      check({ compare: { left: "shipped", op: ">=", right: "ordered" } }, { shipped: 2, ordered: 3 }),
    ).toContain("is false");
    expect(check({ compare: { left: "a", op: "==", right: "b" } }, { a: 3, b: 3n })).toBeNull();
    expect(check({ compare: { left: "a", op: "<", right: "b" } }, { a: "x", b: 1 })).toContain(
      "not two numbers",
    );
    const cel = { expression: 'record.amount > 0 && record.currency in ["EUR", "USD"] && key != ""' };
    expect(check(cel, { amount: 5, currency: "EUR" })).toBeNull();
    expect(check(cel, { amount: 5, currency: "GBP" })).toBe("expression is false, not true");
    expect(check(cel, { currency: "EUR" })).toContain("expression failed");
  });

  it("refuses a rule that cannot compile, naming it", () => {
    expect(() => compileRules([rule({ pattern: { field: "a", regex: "(" } })])).toThrow(/rule 'r': pattern/);
    expect(() => compileRules([rule({ expression: "record.a >" })])).toThrow(
      /rule 'r': expression does not parse/,
    );
    expect(() => rule({ notNull: "a", range: { field: "a" } })).toThrow(/exactly one check/);
  });

  it("enforces, shadows, or skips by mode; a canary enforces on a fixed share of keys", () => {
    const rules = parseConfig({
      pipelines: [
        {
          name: "orders",
          rules: [
            { name: "positive", range: { field: "amount", min: 0 } },
            { name: "has_note", mode: "shadow", notNull: "note" },
            { name: "off_rule", mode: "off", notNull: "never" },
          ],
        },
      ],
    }).pipelines[0]!.rules;
    const reports: Array<Record<string, unknown>> = [];
    const stage = new RulesStage("orders", rules, (r) => reports.push(r.counts));
    const out = stage.process([record(1, { amount: 1 }), record(2, { amount: -1, note: "n" })]);
    expect(out[0]!.kind).toBe("keep");
    expect(out[1]).toMatchObject({
      kind: "reject",
      rejection: { code: ErrorCode.RuleFailed, message: 'rule "positive": amount is -1, not within [0, ∞]' },
    });
    expect(reports[0]).toEqual({
      positive: { checked: 2, rejected: 1, shadowed: 0 },
      // Checked only on the record the enforced rule kept.
      has_note: { checked: 1, rejected: 0, shadowed: 1 },
    });

    const canary = new RulesStage("orders", [rule({ range: { field: "amount", min: 0 }, canary: 10 })]);
    const keys = Array.from({ length: 10_000 }, (_, i) => `key-${i}`);
    const batch = keys.map((k, i) => ({ ...record(i + 1, { amount: -1 }), key: k }));
    const decided = canary.process(batch);
    const enforced = decided.filter((d) => d.kind === "reject").length;
    expect(enforced).toBeGreaterThan(800);
    expect(enforced).toBeLessThan(1_200);
    // By key hash, not by draw: the same key lands on the same side every time.
    expect(decided.map((d) => d.kind)).toEqual(canary.process(batch).map((d) => d.kind));
    expect(decided.map((d) => d.kind === "reject")).toEqual(keys.map((k) => inCanary("r", k, 1_000)));
  });

  it("builds a pipeline's stages from its config: schema first, then rules", () => {
    const p = parseConfig({
      pipelines: [{ name: "orders", schema: { subject: "orders" }, rules: [{ name: "r", notNull: "id" }] }],
    }).pipelines[0]!;
    const registry = new SchemaRegistry(new MemoryJsonStore<RegistryValue>());
    expect(pipelineStages(p, { schemas: registry, now: () => 0 }).map((s) => s.name)).toEqual([
      "schema",
      "rules",
    ]);
    expect(() => pipelineStages(p, { now: () => 0 })).toThrow(SluiceError);
  });
});
