/**
 * The contract every `Sink` keeps, as one suite: run it against an implementation with
 * `sinkContract(name, harness)`. A new sink joins by adding one call to `sink-contract.test.ts`.
 */
import { afterEach, describe, expect, it } from "vitest";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import type { ShardRef } from "../../shared/contract/ownership.js";
import type { Sink, SinkInspector, SinkRow } from "../../shared/contract/ports.js";

export interface SinkHarness {
  /** A sink on fresh, empty storage. */
  open(): Promise<Sink>;
  /**
   * Another sink on the storage of the last `open` (a second process or connection), or the same
   * object when the implementation has no storage outside itself.
   */
  again(): Promise<Sink>;
  /** Reads what the last `open`'s storage holds; null for a sink that keeps no rows. */
  inspector(): Promise<SinkInspector | null>;
  /** Frees the storage of the last `open`. */
  cleanUp(): Promise<void>;
  /** Whether the sink deduplicates by business key (`CommitOptions.dedupeWindowMs`). */
  dedupes?: boolean;
  /** Whether the sink keeps an audit row per commit (`CommitOptions.audit`, `sluice_batches`). */
  audits?: boolean;
}

const REF: ShardRef = { pipeline: "demo", shard: 3 };

export const contractRow = (seq: number, key = `k${seq}`): SinkRow => ({
  recordId: `id-${seq}`,
  key,
  sourceSeq: seq,
  value: { seq, key, nested: { list: [1, "two", null, true] } },
});
const rows = (from: number, to: number): SinkRow[] =>
  Array.from({ length: to - from + 1 }, (_, i) => contractRow(from + i));

async function expectCode(p: Promise<unknown>, code: ErrorCode): Promise<SluiceError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SluiceError);
  expect((err as SluiceError).code).toBe(code);
  return err as SluiceError;
}

export function sinkContract(name: string, h: SinkHarness): void {
  describe(`Sink contract: ${name}`, () => {
    const opened: Sink[] = [];
    const open = async (): Promise<Sink> => {
      const s = await h.open();
      opened.push(s);
      return s;
    };
    const again = async (): Promise<Sink> => {
      const s = await h.again();
      opened.push(s);
      return s;
    };
    /** Source sequences of the shard's stored rows in commit order; null when none are kept. */
    const stored = async (ref = REF): Promise<Array<[number, string, number]> | null> => {
      const i = await h.inspector();
      if (!i) return null;
      return (await i.rows(ref.pipeline, { shard: ref.shard })).map((r) => [r.sourceSeq, r.worker, r.epoch]);
    };
    const seqs = async (ref = REF): Promise<number[] | null> => (await stored(ref))?.map((r) => r[0]) ?? null;

    afterEach(async () => {
      for (const s of opened.splice(0)) await s.close().catch(() => undefined);
      await h.cleanUp();
    });

    it("fence, then commit: rows and checkpoint are stored together", async () => {
      const sink = await open();
      expect(await sink.checkpoint(REF)).toEqual({ epoch: 0, seq: 0 });
      expect(await sink.fence(REF, 1)).toEqual({ epoch: 1, seq: 0 });
      const r = await sink.commit(REF, 1, "w1", rows(1, 3), 3);
      expect(r).toEqual({ committed: 3, skipped: 0, checkpoint: { epoch: 1, seq: 3 } });
      expect(await sink.checkpoint(REF)).toEqual({ epoch: 1, seq: 3 });
      const got = await stored();
      if (got) expect(got).toEqual([1, 2, 3].map((s) => [s, "w1", 1]));
    });

    it("re-fencing keeps the committed sequence and is idempotent at the same epoch", async () => {
      const sink = await open();
      await sink.fence(REF, 1);
      await sink.commit(REF, 1, "w1", rows(1, 5), 5);
      expect(await sink.fence(REF, 1)).toEqual({ epoch: 1, seq: 5 });
      expect(await sink.fence(REF, 4)).toEqual({ epoch: 4, seq: 5 });
      expect(await sink.checkpoint(REF)).toEqual({ epoch: 4, seq: 5 });
    });

    it("refuses a commit below the fenced epoch with FENCED and writes nothing", async () => {
      const sink = await open();
      await sink.fence(REF, 1);
      await sink.commit(REF, 1, "w1", rows(1, 2), 2);
      await sink.fence(REF, 2);
      const err = await expectCode(sink.commit(REF, 1, "w1", rows(3, 4), 4), ErrorCode.Fenced);
      expect(err.retryable).toBe(false);
      expect(err.fencedBy).toBe(2);
      expect(await sink.checkpoint(REF)).toEqual({ epoch: 2, seq: 2 });
      const s = await seqs();
      if (s) expect(s).toEqual([1, 2]);
    });

    it("commits of many shards at once keep their own outcomes: a fenced one and one before its fence are refused alone", async () => {
      const sink = await open();
      const refs = Array.from({ length: 6 }, (_, shard): ShardRef => ({ pipeline: "demo", shard }));
      for (const r of refs.slice(0, 5)) await sink.fence(r, 1);
      await sink.fence(refs[2]!, 2);
      // Record ids are unique across shards, as a stream's are.
      const commit = (of = refs) =>
        of.map((r) =>
          sink.commit(
            r,
            1,
            "w1",
            rows(1, 4).map((x) => ({ ...x, recordId: `${x.recordId}-s${r.shard}` })),
            4,
          ),
        );
      const first = await Promise.allSettled(commit());
      for (const [i, res] of first.entries()) {
        if (i === 2) expect(res).toMatchObject({ status: "rejected", reason: { code: ErrorCode.Fenced } });
        else if (i === 5)
          expect(res).toMatchObject({ status: "rejected", reason: { code: ErrorCode.Conflict } });
        else
          expect(res).toEqual({
            status: "fulfilled",
            value: { committed: 4, skipped: 0, checkpoint: { epoch: 1, seq: 4 } },
          });
      }
      // Redelivered together: every row skipped, none written twice.
      const again = await Promise.allSettled(commit(refs.filter((_, i) => i !== 2 && i !== 5)));
      for (const res of again)
        expect(res).toMatchObject({ status: "fulfilled", value: { committed: 0, skipped: 4 } });
      for (const [i, r] of refs.entries()) {
        expect(await sink.checkpoint(r)).toEqual(
          i === 2 ? { epoch: 2, seq: 0 } : i === 5 ? { epoch: 0, seq: 0 } : { epoch: 1, seq: 4 },
        );
        const s = await seqs(r);
        if (s) expect(s).toEqual(i === 2 || i === 5 ? [] : [1, 2, 3, 4]);
      }
    });

    it("refuses a fence below the stored one with FENCED and keeps the fence", async () => {
      const sink = await open();
      await sink.fence(REF, 5);
      await expectCode(sink.fence(REF, 4), ErrorCode.Fenced);
      expect(await sink.checkpoint(REF)).toEqual({ epoch: 5, seq: 0 });
    });

    it("refuses a commit before its fence with CONFLICT, also at an epoch above the fence", async () => {
      const sink = await open();
      await expectCode(sink.commit(REF, 1, "w1", rows(1, 1), 1), ErrorCode.Conflict);
      await sink.fence(REF, 1);
      await expectCode(sink.commit(REF, 2, "w1", rows(1, 1), 1), ErrorCode.Conflict);
      expect(await sink.checkpoint(REF)).toEqual({ epoch: 1, seq: 0 });
      const s = await seqs();
      if (s) expect(s).toEqual([]);
    });

    it("skips redelivered rows (at or below the checkpoint) and counts them, never writing twice", async () => {
      const sink = await open();
      await sink.fence(REF, 1);
      await sink.commit(REF, 1, "w1", rows(1, 5), 5);
      expect(await sink.commit(REF, 1, "w1", rows(3, 8), 8)).toEqual({
        committed: 3,
        skipped: 3,
        checkpoint: { epoch: 1, seq: 8 },
      });
      await sink.fence(REF, 2);
      expect(await sink.commit(REF, 2, "w2", rows(1, 8), 8)).toEqual({
        committed: 0,
        skipped: 8,
        checkpoint: { epoch: 2, seq: 8 },
      });
      const s = await seqs();
      if (s) expect(s).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    });

    it("advances the checkpoint without rows (a batch of dead letters) and never moves it back", async () => {
      const sink = await open();
      await sink.fence(REF, 1);
      await sink.commit(REF, 1, "w1", rows(1, 2), 2);
      expect(await sink.commit(REF, 1, "w1", [], 9)).toEqual({
        committed: 0,
        skipped: 0,
        checkpoint: { epoch: 1, seq: 9 },
      });
      expect((await sink.commit(REF, 1, "w1", [contractRow(9)], 9)).skipped).toBe(1);
      expect((await sink.commit(REF, 1, "w1", [], 4)).checkpoint).toEqual({ epoch: 1, seq: 9 });
      expect(await sink.checkpoint(REF)).toEqual({ epoch: 1, seq: 9 });
      const s = await seqs();
      if (s) expect(s).toEqual([1, 2]);
    });

    it("keeps the fingerprint of the checkpoint's record through fences, reconciliation and reopening", async () => {
      const sink = await open();
      await sink.fence(REF, 1);
      await sink.commit(REF, 1, "w1", rows(1, 4), 4, { fingerprint: "id-4" });
      expect(await sink.checkpoint(REF)).toEqual({ epoch: 1, seq: 4, fingerprint: "id-4" });
      expect(await sink.fence(REF, 2)).toEqual({ epoch: 2, seq: 4, fingerprint: "id-4" });
      await sink.commit(REF, 2, "w2", [], 3, { fingerprint: "other", belowCheckpoint: true });
      expect(await (await again()).checkpoint(REF)).toEqual({ epoch: 2, seq: 4, fingerprint: "id-4" });
    });

    it("keeps the stages' pinned state with the checkpoint: set by a commit, kept by fences and by commits without it", async () => {
      const sink = await open();
      await sink.fence(REF, 1);
      const pinned = { "schema:orders": 2, deadLetteredThrough: 4 };
      expect((await sink.commit(REF, 1, "w1", [], 0, { state: pinned })).checkpoint).toEqual({
        epoch: 1,
        seq: 0,
        state: pinned,
      });
      await sink.commit(REF, 1, "w1", rows(1, 4), 4, { fingerprint: "id-4" });
      expect(await sink.checkpoint(REF)).toEqual({ epoch: 1, seq: 4, fingerprint: "id-4", state: pinned });
      expect(await sink.fence(REF, 2)).toEqual({ epoch: 2, seq: 4, fingerprint: "id-4", state: pinned });
      // A reconciliation batch ending below the checkpoint leaves its state, as its sequence.
      await sink.commit(REF, 2, "w2", [], 3, { state: { "schema:orders": 9 }, belowCheckpoint: true });
      const next = { "schema:orders": 3 };
      await sink.commit(REF, 2, "w2", [], 4, { state: next });
      expect(await (await again()).checkpoint(REF)).toEqual({
        epoch: 2,
        seq: 4,
        fingerprint: "id-4",
        state: next,
      });
    });

    it.runIf(h.dedupes)(
      "keeps one record per business key and window, marks committed with the rows, none by a refused commit",
      async () => {
        const W = 10_000;
        const d = (seq: number, key: string, at: number): SinkRow => ({
          ...contractRow(seq),
          dedupe: { key, at },
        });
        const sink = await open();
        await sink.fence(REF, 2);
        // Within one batch: the second `a` is a duplicate; an `a` past the window is kept.
        expect(
          await sink.commit(
            REF,
            2,
            "w1",
            [d(1, "a", 1_000), d(2, "a", 1_500), d(3, "b", 2_000), d(4, "a", 11_001)],
            4,
            {
              dedupeWindowMs: W,
            },
          ),
        ).toMatchObject({ committed: 3, skipped: 0, duplicates: 1 });
        // Across batches, and through another connection: the marks are stored with the rows.
        const other = await again();
        expect(
          await other.commit(REF, 2, "w1", [d(5, "b", 3_000), d(6, "c", 3_000)], 6, { dedupeWindowMs: W }),
        ).toMatchObject({ committed: 1, duplicates: 1 });
        // A redelivery is skipped by sequence, not counted as a duplicate.
        expect(await other.commit(REF, 2, "w1", [d(6, "c", 3_000)], 6, { dedupeWindowMs: W })).toMatchObject({
          committed: 0,
          skipped: 1,
        });
        // A refused commit (a zombie at epoch 1) leaves no mark.
        await expectCode(
          other.commit(REF, 1, "w0", [d(7, "z", 3_500)], 7, { dedupeWindowMs: W }),
          ErrorCode.Fenced,
        );
        expect(await other.commit(REF, 2, "w1", [d(7, "z", 3_600)], 7, { dedupeWindowMs: W })).toMatchObject({
          committed: 1,
        });
        // Marks more than two windows behind the newest time committed are removed.
        await other.commit(REF, 2, "w1", [d(8, "late", 40_000)], 8, { dedupeWindowMs: W });
        expect(
          await other.commit(REF, 2, "w1", [d(9, "a", 12_000), d(10, "late", 45_000)], 10, {
            dedupeWindowMs: W,
          }),
        ).toMatchObject({ committed: 1, duplicates: 1 });
        const s = await seqs();
        if (s) expect(s).toEqual([1, 3, 4, 6, 7, 8, 9]);
        // Counted per shard with its checkpoint, in the commits that dropped them.
        expect((await other.checkpoint(REF)).state).toEqual({ duplicates: 3 });
      },
    );

    it.runIf(h.audits)(
      "writes one audit row per commit that takes in records, none for a redelivery, a state pin or a refused commit",
      async () => {
        const audit = (firstSeq: number, deadLettered = 0) => ({
          audit: { firstSeq, deadLettered, late: 0, configRevision: "rev-1" },
        });
        const sink = await open();
        await sink.fence(REF, 1);
        await sink.commit(REF, 1, "w1", rows(1, 3), 3, audit(1));
        // A redelivery at or below the checkpoint takes in nothing.
        await sink.commit(REF, 1, "w1", rows(2, 3), 3, audit(2));
        // Dead letters only: the checkpoint moves, no row is written.
        await sink.commit(REF, 1, "w1", [], 5, audit(4, 2));
        // A batch partly below the checkpoint: the row names the part taken in.
        await sink.commit(REF, 1, "w1", rows(4, 8), 8, audit(4));
        // Pinned state only, and a commit that asks for no audit row.
        await sink.commit(REF, 1, "w1", [], 0, { state: { "schema:x": 1 } });
        await sink.commit(REF, 1, "w1", rows(9, 9), 9);
        const next = await again();
        await next.fence(REF, 2);
        await expectCode(sink.commit(REF, 1, "w1", rows(10, 11), 11, audit(10)), ErrorCode.Fenced);
        const dedupe = h.dedupes
          ? {
              dedupeWindowMs: 60_000,
            }
          : {};
        const d = (seq: number, key: string): SinkRow => ({
          ...contractRow(seq),
          dedupe: { key, at: 1_000 },
        });
        await next.commit(REF, 2, "w2", [d(10, "a"), d(11, "a"), d(12, "b")], 12, {
          ...audit(10, 1),
          ...dedupe,
        });
        const i = await h.inspector();
        const got = (await i!.batches!(REF.pipeline, { shard: REF.shard })).map(
          ({ committedAt, pipeline, shard, ...b }) => {
            expect(committedAt).toBeGreaterThan(0);
            expect([pipeline, shard]).toEqual([REF.pipeline, REF.shard]);
            return b;
          },
        );
        const row = (
          epoch: number,
          worker: string,
          firstSeq: number,
          lastSeq: number,
          n: number,
          dead = 0,
          dup = 0,
        ) => ({
          epoch,
          worker,
          firstSeq,
          lastSeq,
          rows: n,
          late: 0,
          deadLettered: dead,
          deduplicated: dup,
          configRevision: "rev-1",
        });
        expect(got).toEqual([
          row(1, "w1", 1, 3, 3),
          row(1, "w1", 4, 5, 0, 2),
          row(1, "w1", 6, 8, 3),
          h.dedupes ? row(2, "w2", 10, 12, 2, 1, 1) : row(2, "w2", 10, 12, 3, 1),
        ]);
        expect(await i!.batches!("other")).toEqual([]);
      },
    );

    it.runIf(h.audits)(
      "stores a late row with its flag and in the late table, in the commit; a refused commit records none",
      async () => {
        const sink = await open();
        await sink.fence(REF, 2);
        const late = (seq: number, eventTime: number, watermark: number): SinkRow => ({
          ...contractRow(seq),
          late: { eventTime, watermark },
        });
        await expectCode(sink.commit(REF, 1, "w0", [late(1, 5, 9)], 1), ErrorCode.Fenced);
        await sink.commit(
          REF,
          2,
          "w1",
          [contractRow(1), late(2, 80, 90), contractRow(3), late(4, 1, 140)],
          4,
        );
        // A redelivery records nothing twice.
        await sink.commit(REF, 2, "w1", [late(4, 1, 140)], 4);
        const i = (await h.inspector())!;
        const rowsNow = await i.rows(REF.pipeline, { shard: REF.shard, values: true });
        expect(rowsNow.map((r) => [r.sourceSeq, r.late ?? false])).toEqual([
          [1, false],
          [2, true],
          [3, false],
          [4, true],
        ]);
        expect(
          (await i.lateRecords!(REF.pipeline)).map(({ committedAt, ...l }) => {
            expect(committedAt).toBeGreaterThan(0);
            return l;
          }),
        ).toEqual([
          {
            pipeline: REF.pipeline,
            shard: REF.shard,
            sourceSeq: 2,
            recordId: "id-2",
            eventTime: 80,
            watermark: 90,
            reconciled: false,
          },
          {
            pipeline: REF.pipeline,
            shard: REF.shard,
            sourceSeq: 4,
            recordId: "id-4",
            eventTime: 1,
            watermark: 140,
            reconciled: false,
          },
        ]);
      },
    );

    it.runIf(h.audits)(
      "applies branch records to a merge's table by its policy in the commit: the highest wins, an older one never overwrites it",
      async () => {
        const sink = await open();
        const A: ShardRef = { pipeline: "demo", shard: 3 };
        const B: ShardRef = { pipeline: "orders", shard: 3 };
        await sink.fence(A, 1);
        await sink.fence(B, 1);
        const m = (
          seq: number,
          key: string,
          eventTime: number,
          priority: number,
          id = `id-${seq}`,
        ): SinkRow => ({
          recordId: id,
          key,
          sourceSeq: seq,
          value: { key, eventTime, priority },
          merge: { into: "merged", policy: "latest", priority, eventTime },
        });
        await sink.commit(
          A,
          1,
          "w1",
          [m(1, "a", 100, 2), m(2, "b", 200, 2), m(3, "c", 50, 2), m(4, "a", 90, 2)],
          4,
        );
        // Later in time wins; a tie in time goes to the higher priority, then the higher record id.
        await sink.commit(
          B,
          1,
          "w2",
          [m(1, "a", 150, 1), m(2, "b", 200, 1), m(3, "d", 7, 1, "x-9"), m(4, "d", 7, 1, "x-10")],
          4,
        );
        // Older again, and a redelivery: nothing changes.
        await sink.commit(A, 1, "w1", [m(5, "a", 120, 2), m(6, "late", 1, 2)], 6);
        await sink.commit(B, 1, "w2", [m(4, "d", 7, 1, "x-10")], 4);
        // A row without the merge mark (a late record) is not applied.
        await sink.commit(B, 1, "w2", [{ ...contractRow(7, "a"), value: { late: true } }], 7);
        const i = (await h.inspector())!;
        const got = (await i.mergeRows!("merged")).map((r) => {
          expect(r.updatedAt).toBeGreaterThan(0);
          return [r.key, r.recordId, r.pipeline, r.shard, r.sourceSeq, r.eventTime, r.priority, r.value];
        });
        expect(got).toEqual([
          ["a", "id-1", "orders", 3, 1, 150, 1, { key: "a", eventTime: 150, priority: 1 }],
          ["b", "id-2", "demo", 3, 2, 200, 2, { key: "b", eventTime: 200, priority: 2 }],
          ["c", "id-3", "demo", 3, 3, 50, 2, { key: "c", eventTime: 50, priority: 2 }],
          ["d", "x-9", "orders", 3, 3, 7, 1, { key: "d", eventTime: 7, priority: 1 }],
          ["late", "id-6", "demo", 3, 6, 1, 2, { key: "late", eventTime: 1, priority: 2 }],
        ]);
        expect(await i.mergeRows!("other")).toEqual([]);
      },
    );

    it("stores each row's lineage with it, and none for a row without", async () => {
      const sink = await open();
      await sink.fence(REF, 1);
      await sink.commit(
        REF,
        1,
        "w1",
        [{ ...contractRow(1), lineage: { customers: 17, "fx-rates": 3 } }, contractRow(2)],
        2,
      );
      const i = await h.inspector();
      if (!i) return;
      const got = await i.rows(REF.pipeline, { shard: REF.shard, values: true });
      expect(got.map((r) => [r.sourceSeq, r.lineage])).toEqual([
        [1, { customers: 17, "fx-rates": 3 }],
        [2, undefined],
      ]);
    });

    it("writes below the checkpoint only when reconciling", async () => {
      const sink = await open();
      await sink.fence(REF, 1);
      await sink.commit(REF, 1, "w1", rows(1, 6), 6, { fingerprint: "id-6" });
      const displaced: SinkRow = { ...contractRow(3), recordId: "late" };
      expect((await sink.commit(REF, 1, "w1", [displaced], 3)).committed).toBe(0);
      expect(await sink.commit(REF, 1, "w1", [displaced], 3, { belowCheckpoint: true })).toEqual({
        committed: 1,
        skipped: 0,
        checkpoint: { epoch: 1, seq: 6, fingerprint: "id-6" },
      });
    });

    it("lists the record ids committed at or above a sequence (when it keeps rows)", async () => {
      const sink = await open();
      await sink.fence(REF, 1);
      await sink.commit(REF, 1, "w1", rows(1, 6), 6);
      if (!(await h.inspector())) return;
      expect((await sink.recordIds(REF, 4)).sort()).toEqual(["id-4", "id-5", "id-6"]);
      expect(await sink.recordIds({ pipeline: "demo", shard: 9 }, 0)).toEqual([]);
    });

    it("keeps shards and pipelines apart", async () => {
      const sink = await open();
      const other: ShardRef = { pipeline: "demo", shard: 4 };
      const orders: ShardRef = { pipeline: "orders", shard: 3 };
      await sink.fence(REF, 7);
      await sink.fence(other, 1);
      await sink.fence(orders, 1);
      await sink.commit(other, 1, "w1", rows(1, 2), 2);
      await sink.commit(orders, 1, "w1", rows(1, 1), 1);
      expect(await sink.checkpoint(REF)).toEqual({ epoch: 7, seq: 0 });
      expect(await sink.checkpoint(other)).toEqual({ epoch: 1, seq: 2 });
      expect(await sink.checkpoint(orders)).toEqual({ epoch: 1, seq: 1 });
      const i = await h.inspector();
      if (!i) return;
      expect(await i.rowCount("orders")).toBe(1);
      expect((await i.rows("demo")).map((r) => r.shard)).toEqual([4, 4]);
      expect(
        (await i.checkpoints()).map((c) => `${c.pipeline}.${c.shard}@${c.epoch}:${c.seq}`).sort(),
      ).toEqual(["demo.3@7:0", "demo.4@1:2", "orders.3@1:1"]);
    });

    it("a zombie's whole batch is refused once another connection fenced past it", async () => {
      const a = await open();
      await a.fence(REF, 1);
      await a.commit(REF, 1, "wA", rows(1, 3), 3);
      const b = await again();
      expect(await b.fence(REF, 2)).toEqual({ epoch: 2, seq: 3 });
      await expectCode(a.commit(REF, 1, "wA", rows(4, 10), 10), ErrorCode.Fenced);
      await expectCode(a.fence(REF, 1), ErrorCode.Fenced);
      expect((await b.commit(REF, 2, "wB", rows(4, 6), 6)).committed).toBe(3);
      expect(await a.checkpoint(REF)).toEqual({ epoch: 2, seq: 6 });
      const got = await stored();
      if (got)
        expect(got).toEqual([
          [1, "wA", 1],
          [2, "wA", 1],
          [3, "wA", 1],
          [4, "wB", 2],
          [5, "wB", 2],
          [6, "wB", 2],
        ]);
    });

    it("reads rows back with their values, in commit order, filtered by shard and time", async () => {
      const sink = await open();
      const i = await h.inspector();
      if (!i) return;
      const t0 = Date.now();
      await sink.fence(REF, 1);
      await sink.commit(REF, 1, "w1", rows(1, 3), 3);
      const all = await i.rows("demo", { values: true });
      expect(all.map((r) => r.recordId)).toEqual(["id-1", "id-2", "id-3"]);
      expect(all[0]!.value).toEqual(contractRow(1).value);
      expect(all.every((r, n) => n === 0 || r.order > all[n - 1]!.order)).toBe(true);
      expect(all.every((r) => r.committedAt >= t0 - 1000 && r.committedAt <= Date.now() + 1000)).toBe(true);
      expect(await i.rows("demo", { shard: 9 })).toEqual([]);
      expect(await i.rows("demo", { sinceMs: Date.now() + 60_000 })).toEqual([]);
      expect(await i.rows("nothing")).toEqual([]);
      expect(await i.rowCount("nothing")).toBe(0);
    });

    it("once closed, refuses fences and commits with UNAVAILABLE; close is idempotent", async () => {
      const sink = await open();
      await sink.fence(REF, 1);
      await sink.close();
      await sink.close();
      await expectCode(sink.commit(REF, 1, "w1", rows(1, 1), 1), ErrorCode.Unavailable);
      await expectCode(sink.fence(REF, 2), ErrorCode.Unavailable);
    });
  });
}
