/** Merges: the policies' total orders, the branch stage, the config's checks, and order independence in the sinks. */
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { formatMergeStatus, mergeStatus } from "../../nodes/cli/merge-commands.js";
import { MemorySink } from "../../shared/adapters/sink/memory-sink.js";
import { SqliteSinkInspector } from "../../shared/adapters/sink/sqlite-inspector.js";
import { SqliteSink } from "../../shared/adapters/sink/sqlite-sink.js";
import { mergeOf, parseConfig } from "../../shared/contract/config.js";
import { ErrorCode } from "../../shared/contract/errors.js";
import type { ShardRef } from "../../shared/contract/ownership.js";
import type { MergeRow, Sink, SinkInspector, SinkRow } from "../../shared/contract/ports.js";
import { compareCodePoints, compareMerge, type MergePolicy } from "../../shared/core/merge-policy.js";
import { pipelineStages } from "../../shared/pipeline/pipeline-stages.js";
import type { PipelineRecord } from "../../shared/pipeline/stage.js";
import { MergeStage } from "../../shared/pipeline/stages/merge-stage.js";
import { reconcileScenario } from "../kit/merge-scenarios.js";

const sign = (n: number) => Math.sign(n);

describe("merge policies", () => {
  it("compare record ids byte by byte in UTF-8", () => {
    fc.assert(
      fc.property(fc.string({ unit: "binary" }), fc.string({ unit: "binary" }), (a, b) => {
        expect(sign(compareCodePoints(a, b))).toBe(sign(Buffer.compare(Buffer.from(a), Buffer.from(b))));
      }),
      { numRuns: 5_000 },
    );
    expect(compareCodePoints("\u{1F600}", "\uFFFD")).toBe(1);
    expect(compareCodePoints("x-10", "x-9")).toBe(-1);
  });

  it("latest ranks by event time, then priority, then record id; priority by priority first", () => {
    const a = { recordId: "a", eventTime: 200, priority: 1 };
    const b = { recordId: "b", eventTime: 100, priority: 2 };
    expect(compareMerge("latest", a, b)).toBeGreaterThan(0);
    expect(compareMerge("priority", a, b)).toBeLessThan(0);
    expect(compareMerge("latest", { ...b, eventTime: 200 }, a)).toBeGreaterThan(0);
    expect(compareMerge("latest", { ...a, recordId: "c" }, a)).toBeGreaterThan(0);
    expect(compareMerge("priority", a, { ...a })).toBe(0);
  });
});

describe("merge stage", () => {
  const rec = (key: string, value: Record<string, unknown>, late = false): PipelineRecord => ({
    recordId: `r-${key}`,
    key,
    sourceSeq: 1,
    value,
    message: {
      seq: 1,
      deliverySeq: 1,
      token: 1,
      subject: `sluice.in.crm.0.${key}`,
      data: new Uint8Array(),
      headers: {},
    },
    eventTime: 10,
    ...(late ? { late: { eventTime: 10, watermark: 20 } } : {}),
  });

  it("marks on-time records for the merge, leaves late ones, and dead-letters a key that is not the record's", () => {
    const stage = new MergeStage({ name: "customers", key: "customer_id", policy: "latest" }, 2);
    const out = stage.process([
      rec("c1", { customer_id: "c1" }),
      rec("c2", { customer_id: "c2" }, true),
      rec("c3", { customer_id: "c4" }),
      rec("7", { customer_id: 7 }),
      rec("c5", {}),
    ]);
    expect(out[0]).toMatchObject({
      kind: "keep",
      record: { merge: { into: "customers", policy: "latest", priority: 2, eventTime: 10 } },
    });
    expect(out[1]!.kind === "keep" && out[1]!.record.merge).toBe(undefined);
    expect(out[2]).toMatchObject({
      kind: "reject",
      rejection: {
        code: ErrorCode.MergeKeyMismatch,
        message: `merge customers: field customer_id is "c4", not the key 'c3' the record was published under`,
      },
    });
    expect(out[3]).toMatchObject({ kind: "keep" });
    expect(out[4]).toMatchObject({ kind: "reject", rejection: { message: /field customer_id is absent/ } });
  });

  it("runs after the event time and before dedupe", () => {
    const cfg = parseConfig({
      pipelines: [
        {
          name: "crm",
          eventTime: "updated_at",
          lateness: { allowed: "10s" },
          merge: { into: "customers", priority: 2 },
          stages: [{ dedupe: { key: "id", window: "1h" } }],
        },
      ],
      merges: [{ name: "customers", key: "customer_id" }],
    });
    const p = cfg.pipelines[0]!;
    expect(pipelineStages(p, { now: () => 0, merge: mergeOf(cfg, p) }).map((s) => s.name)).toEqual([
      "event-time",
      "merge",
      "dedupe",
    ]);
  });
});

describe("merge config", () => {
  const branch = (name: string, more: Record<string, unknown> = {}) => ({
    name,
    shards: 8,
    eventTime: "updated_at",
    lateness: { allowed: "10s" },
    merge: { into: "customers", priority: 1 },
    ...more,
  });

  it("starts from the example: two branches into one merge", () => {
    const cfg = parseConfig({
      pipelines: [branch("crm", { merge: { into: "customers", priority: 2 } }), branch("billing")],
      merges: [{ name: "customers", key: "customer_id", policy: "latest" }],
    });
    expect(cfg.merges).toEqual([{ name: "customers", key: "customer_id", policy: "latest" }]);
    expect(mergeOf(cfg, cfg.pipelines[0]!)?.name).toBe("customers");
  });

  it.each([
    [
      { pipelines: [branch("crm")], merges: [] },
      /merge.into names 'customers', which merges does not define/,
    ],
    [
      { pipelines: [branch("crm"), branch("billing", { shards: 4 })], merges: [{ name: "customers" }] },
      /same shard count \(crm: 8, billing: 4\)/,
    ],
    [
      {
        pipelines: [branch("crm", { eventTime: undefined, lateness: undefined })],
        merges: [{ name: "customers" }],
      },
      /needs eventTime/,
    ],
    [
      { pipelines: [branch("crm")], merges: [{ name: "customers" }, { name: "x" }] },
      /merge 'x' has no branches/,
    ],
    [{ pipelines: [branch("customers")], merges: [{ name: "customers" }] }, /has a pipeline's name/],
    [
      {
        sink: { type: "jetstream" },
        pipelines: [branch("crm", { lateness: undefined })],
        merges: [{ name: "customers" }],
      },
      /needs a database sink/,
    ],
    [
      {
        pipelines: [
          branch("crm"),
          branch("billing", { sink: { type: "postgres", url: "postgres://x@127.0.0.1/y" } }),
        ],
        merges: [{ name: "customers" }],
      },
      /must commit to the same sink/,
    ],
  ])("refuses %#", (raw, why) => {
    expect(() => parseConfig(raw)).toThrow(why);
  });
});

/** Applies `rows` (each with its branch) in the given order, one commit per run of one branch. */
async function applyInOrder(
  sink: Sink,
  rows: ReadonlyArray<{ branch: string; row: SinkRow }>,
): Promise<void> {
  const seqs = new Map<string, number>();
  for (const b of new Set(rows.map((r) => r.branch))) await sink.fence({ pipeline: b, shard: 0 }, 1);
  let i = 0;
  while (i < rows.length) {
    const branch = rows[i]!.branch;
    const batch: SinkRow[] = [];
    for (; i < rows.length && rows[i]!.branch === branch && batch.length < 3; i++) {
      const seq = (seqs.get(branch) ?? 0) + 1;
      seqs.set(branch, seq);
      batch.push({ ...rows[i]!.row, sourceSeq: seq });
    }
    const ref: ShardRef = { pipeline: branch, shard: 0 };
    await sink.commit(ref, 1, "w", batch, batch.at(-1)!.sourceSeq);
  }
}

const arbRecords = (policy: MergePolicy) =>
  fc
    .array(
      fc.record({
        branch: fc.constantFrom("crm", "billing"),
        key: fc.constantFrom("k1", "k2", "k3"),
        eventTime: fc.integer({ min: 0, max: 5 }),
        id: fc.string({ unit: "grapheme-ascii", minLength: 1, maxLength: 3 }),
      }),
      { minLength: 1, maxLength: 25 },
    )
    .map((xs) =>
      // Record ids are unique, as in a stream.
      xs.map((x, n) => {
        const priority = x.branch === "crm" ? 2 : 1;
        const row: SinkRow = {
          recordId: `${x.id}#${n}`,
          key: x.key,
          sourceSeq: 0,
          value: { n },
          merge: { into: "customers", policy, priority, eventTime: x.eventTime },
        };
        return { branch: x.branch, row };
      }),
    );

/** The policy applied to every record, computed without a sink. */
function expected(policy: MergePolicy, rows: ReadonlyArray<{ row: SinkRow }>): Array<[string, string]> {
  const best = new Map<string, SinkRow>();
  for (const { row } of rows) {
    const cur = best.get(row.key);
    const rank = (r: SinkRow) => ({
      recordId: r.recordId,
      eventTime: r.merge!.eventTime,
      priority: r.merge!.priority,
    });
    if (!cur || compareMerge(policy, rank(row), rank(cur)) > 0) best.set(row.key, row);
  }
  return [...best.entries()].sort(([a], [b]) => compareCodePoints(a, b)).map(([k, r]) => [k, r.recordId]);
}

const summary = (rows: MergeRow[]) => rows.map((r) => [r.key, r.recordId]);

describe("a merge's table does not depend on arrival order, interleaving or redelivery", () => {
  it.each(["latest", "priority"] as const)("in memory, policy %s", async (policy) => {
    await fc.assert(
      fc.asyncProperty(arbRecords(policy), fc.integer(), async (rows, seed) => {
        const shuffled = fc.sample(fc.shuffledSubarray(rows, { minLength: rows.length }), {
          seed,
          numRuns: 1,
        })[0]!;
        const a = new MemorySink();
        const b = new MemorySink();
        await applyInOrder(a, rows);
        await applyInOrder(b, shuffled);
        const want = expected(policy, rows);
        expect(summary(await a.mergeRows("customers"))).toEqual(want);
        expect(summary(await b.mergeRows("customers"))).toEqual(want);
      }),
      { numRuns: 300 },
    );
  });

  it.each(["latest", "priority"] as const)("in SQLite, policy %s", async (policy) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sluice-merge-"));
    let n = 0;
    try {
      await fc.assert(
        fc.asyncProperty(arbRecords(policy), fc.integer(), async (rows, seed) => {
          const shuffled = fc.sample(fc.shuffledSubarray(rows, { minLength: rows.length }), {
            seed,
            numRuns: 1,
          })[0]!;
          const want = expected(policy, rows);
          for (const order of [rows, shuffled]) {
            const file = path.join(dir, `m${++n}.db`);
            const sink = new SqliteSink(file, { pipelines: ["crm", "billing"] });
            const inspector: SinkInspector = new SqliteSinkInspector(file);
            await applyInOrder(sink, order);
            expect(summary(await inspector.mergeRows!("customers"))).toEqual(want);
            await inspector.close();
            await sink.close();
          }
        }),
        { numRuns: 40 },
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("late records reconciled into the merge", () => {
  it("in SQLite: the table then equals the policy over every record; a second run changes nothing", async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "sluice-reconcile-"));
    const file = path.join(dir, "sink.db");
    const sink = new SqliteSink(file, { pipelines: ["crm", "billing"] });
    const inspector = new SqliteSinkInspector(file);
    try {
      await reconcileScenario(sink, inspector);
    } finally {
      await inspector.close();
      await sink.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("merge status", () => {
  it("is final below the lowest watermark over the branches' shards, none until every shard has one", () => {
    const cfg = parseConfig({
      pipelines: [
        {
          name: "crm",
          shards: 2,
          eventTime: "t",
          lateness: { allowed: 10 },
          merge: { into: "m", priority: 2 },
        },
        {
          name: "billing",
          shards: 2,
          eventTime: "t",
          lateness: { allowed: 10 },
          merge: { into: "m", priority: 1 },
        },
      ],
      merges: [{ name: "m" }],
    });
    const cp = (pipeline: string, shard: number, max?: number) => ({
      pipeline,
      shard,
      epoch: 1,
      seq: 1,
      ...(max === undefined ? {} : { state: { eventTimeMax: max } }),
    });
    const late = new Map([["billing", [{ reconciled: false }, { reconciled: true }] as never]]);
    const partial = mergeStatus(
      cfg,
      cfg.merges[0]!,
      [cp("crm", 0, 500), cp("crm", 1, 400), cp("billing", 0, 300)],
      7,
      late,
    );
    expect(partial.convergence).toBeNull();
    expect(partial.branches.map((b) => [b.pipeline, b.watermark, b.lagMs, b.pendingLate])).toEqual([
      ["crm", 390, 0, 0],
      ["billing", null, null, 1],
    ]);
    const all = mergeStatus(
      cfg,
      cfg.merges[0]!,
      [cp("crm", 0, 500), cp("crm", 1, 400), cp("billing", 0, 300), cp("billing", 1, 350)],
      7,
      late,
    );
    expect(all.convergence).toBe(290);
    expect(all.branches.map((b) => [b.pipeline, b.watermark, b.lagMs])).toEqual([
      ["crm", 390, 0],
      ["billing", 290, 100],
    ]);
    expect(formatMergeStatus(all)).toContain(
      "billing (priority 1): watermark 1970-01-01T00:00:00.290Z (290), lag 100 ms",
    );
  });
});
