/** A merge scenario every SQL sink must pass: late records reconciled into the merge's table. */
import { expect } from "vitest";
import type { MergeBranches, ReconcileReport } from "../../shared/adapters/sink/sink-tables.js";
import type { Sink, SinkInspector, SinkRow } from "../../shared/contract/ports.js";

/**
 * Two branches commit on-time and late records; `reconcileLate` then leaves the merge's table
 * as the policy over all of them, marks every late record reconciled, and a second run applies
 * nothing.
 */
export async function reconcileScenario(
  sink: Sink & { reconcileLate(m: MergeBranches): Promise<ReconcileReport> },
  inspector: SinkInspector,
): Promise<void> {
  const crm = { pipeline: "crm", priority: 2 };
  const billing = { pipeline: "billing", priority: 1 };
  const m: MergeBranches = { merge: "customers", policy: "latest", branches: [crm, billing] };
  const row = (p: typeof crm, seq: number, key: string, t: number, late: boolean): SinkRow => ({
    recordId: `${p.pipeline}-${seq}`,
    key,
    sourceSeq: seq,
    value: { key, t, from: p.pipeline },
    ...(late
      ? { late: { eventTime: t, watermark: t + 1 } }
      : { merge: { into: "customers", policy: "latest", priority: p.priority, eventTime: t } }),
  });
  for (const b of m.branches) await sink.fence({ pipeline: b.pipeline, shard: 0 }, 1);
  await sink.commit(
    { pipeline: "crm", shard: 0 },
    1,
    "w",
    [row(crm, 1, "a", 100, false), row(crm, 2, "b", 50, true)],
    2,
  );
  await sink.commit(
    { pipeline: "billing", shard: 0 },
    1,
    "w",
    [row(billing, 1, "a", 90, false), row(billing, 2, "a", 300, true), row(billing, 3, "c", 5, true)],
    3,
  );
  const rows = async () =>
    (await inspector.mergeRows!("customers")).map((r) => [
      r.key,
      r.recordId,
      r.pipeline,
      r.eventTime,
      r.value,
    ]);
  expect(await rows()).toEqual([["a", "crm-1", "crm", 100, { key: "a", t: 100, from: "crm" }]]);
  expect(await sink.reconcileLate(m)).toEqual({ merge: "customers", reconciled: 3 });
  // As if every record had come on time: the policy over all five.
  const after = [
    ["a", "billing-2", "billing", 300, { key: "a", t: 300, from: "billing" }],
    ["b", "crm-2", "crm", 50, { key: "b", t: 50, from: "crm" }],
    ["c", "billing-3", "billing", 5, { key: "c", t: 5, from: "billing" }],
  ];
  expect(await rows()).toEqual(after);
  expect((await inspector.lateRecords!("billing")).map((l) => l.reconciled)).toEqual([true, true]);
  expect(await sink.reconcileLate(m)).toEqual({ merge: "customers", reconciled: 0 });
  expect(await rows()).toEqual(after);
}
