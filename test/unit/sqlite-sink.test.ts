import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { encodeRecord } from "../../shared/codec.js";
import type { ShardRef } from "../../shared/core/types.js";
import { ErrorCode, SluiceError } from "../../shared/errors.js";
import type { SinkRow } from "../../shared/ports.js";
import { SqliteSink } from "../../shared/sink/sqlite-sink.js";

const REF: ShardRef = { pipeline: "demo", shard: 3 };

/** A row as the worker hands it over: its record's bytes, CBOR for odd sequences, JSON for even. */
const row = (seq: number, key = `k${seq}`): SinkRow => ({
  recordId: `id-${seq}`,
  key,
  sourceSeq: seq,
  data: seq % 2 === 1 ? encodeRecord({ seq }) : new TextEncoder().encode(` { "seq" : ${seq} } `),
  json: seq % 2 === 0,
});
const rows = (from: number, to: number): SinkRow[] =>
  Array.from({ length: to - from + 1 }, (_, i) => row(from + i));

async function expectCode(p: Promise<unknown>, code: ErrorCode): Promise<SluiceError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SluiceError);
  expect((err as SluiceError).code).toBe(code);
  return err as SluiceError;
}

interface StoredRow {
  record_id: string;
  key: string;
  shard: number;
  source_seq: number;
  epoch: number;
  worker: string;
  payload: string;
  committed_at: number;
}

describe("SqliteSink", () => {
  let dir: string;
  let file: string;
  const opened: SqliteSink[] = [];
  const readers: Database.Database[] = [];

  const open = (opts: { now?: () => number; pipelines?: string[] } = {}): SqliteSink => {
    const s = new SqliteSink(file, { pipelines: opts.pipelines ?? ["demo"], now: opts.now ?? (() => 1000) });
    opened.push(s);
    return s;
  };
  const reader = (): Database.Database => {
    const db = new Database(file, { readonly: true });
    readers.push(db);
    return db;
  };
  const table = (pipeline = "demo"): StoredRow[] =>
    reader().prepare(`SELECT * FROM "${pipeline}" ORDER BY row_id`).all() as StoredRow[];

  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "sluice-sink-"));
    file = path.join(dir, "sink.db");
  });

  afterEach(async () => {
    for (const db of readers.splice(0)) db.close();
    for (const s of opened.splice(0)) await s.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("creates the pipeline table with the documented columns", () => {
    open();
    const cols = reader().prepare(`PRAGMA table_info("demo")`).all() as { name: string; notnull: number }[];
    const names = cols.map((c) => c.name);
    for (const c of ["record_id", "shard", "source_seq", "epoch", "worker", "payload"])
      expect(names).toContain(c);
    expect(names).toEqual([
      "row_id",
      "record_id",
      "key",
      "shard",
      "source_seq",
      "epoch",
      "worker",
      "payload",
      "committed_at",
    ]);
    // Append-only: no unique index that would silently hide a duplicate.
    const idx = reader().prepare(`PRAGMA index_list("demo")`).all() as { unique: number }[];
    expect(idx.filter((i) => i.unique === 1)).toEqual([]);
  });

  it("a row whose bytes cannot be rendered fails the whole commit: no row, no checkpoint", async () => {
    const sink = open();
    await sink.fence(REF, 1);
    const bad: SinkRow = { ...row(2), data: new TextEncoder().encode("{not json"), json: true };
    const err = await expectCode(
      sink.commit(REF, 1, "w1", [row(1), bad, row(3)], 3),
      ErrorCode.UndecodablePayload,
    );
    expect(err.retryable).toBe(false);
    expect(table()).toEqual([]);
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 1, seq: 0 });
  });

  it("fence at 1 then commit rows: rows and checkpoint are stored together", async () => {
    const sink = open({ now: () => 4242 });
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 0, seq: 0 });
    expect(await sink.fence(REF, 1)).toEqual({ epoch: 1, seq: 0 });
    const r = await sink.commit(REF, 1, "w1", rows(1, 3), 3);
    expect(r).toEqual({ committed: 3, skipped: 0, checkpoint: { epoch: 1, seq: 3 } });
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 1, seq: 3 });
    // Each record's JSON text, rendered here from CBOR (odd) or normalised JSON (even).
    expect(table()).toEqual(
      [1, 2, 3].map((seq) => ({
        row_id: seq,
        record_id: `id-${seq}`,
        key: `k${seq}`,
        shard: 3,
        source_seq: seq,
        epoch: 1,
        worker: "w1",
        payload: JSON.stringify({ seq }),
        committed_at: 4242,
      })),
    );
  });

  it("re-fencing keeps the committed sequence and is idempotent at the same epoch", async () => {
    const sink = open();
    await sink.fence(REF, 1);
    await sink.commit(REF, 1, "w1", rows(1, 5), 5);
    expect(await sink.fence(REF, 1)).toEqual({ epoch: 1, seq: 5 });
    expect(await sink.fence(REF, 4)).toEqual({ epoch: 4, seq: 5 });
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 4, seq: 5 });
  });

  it("a commit at a lower epoch after a fence at 2 fails FENCED and writes nothing", async () => {
    const sink = open();
    await sink.fence(REF, 1);
    await sink.commit(REF, 1, "w1", rows(1, 2), 2);
    await sink.fence(REF, 2);
    const err = await expectCode(sink.commit(REF, 1, "w1", rows(3, 4), 4), ErrorCode.Fenced);
    expect(err.retryable).toBe(false);
    expect(table().map((r) => r.source_seq)).toEqual([1, 2]);
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 2, seq: 2 });
  });

  it("a fence with a lower epoch than the stored one fails FENCED and leaves the fence", async () => {
    const sink = open();
    await sink.fence(REF, 5);
    await expectCode(sink.fence(REF, 4), ErrorCode.Fenced);
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 5, seq: 0 });
  });

  it("a commit before its fence fails CONFLICT", async () => {
    const sink = open();
    await expectCode(sink.commit(REF, 1, "w1", rows(1, 1), 1), ErrorCode.Conflict);
    await sink.fence(REF, 1);
    // Commit at a higher epoch than fenced is also a commit before its fence.
    await expectCode(sink.commit(REF, 2, "w1", rows(1, 1), 1), ErrorCode.Conflict);
    expect(table()).toEqual([]);
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 1, seq: 0 });
  });

  it("skips redelivered rows (sourceSeq <= checkpoint) and counts them, never writing twice", async () => {
    const sink = open();
    await sink.fence(REF, 1);
    await sink.commit(REF, 1, "w1", rows(1, 5), 5);
    // Redelivery overlapping the committed range, e.g. after a crash before the ack.
    const r = await sink.commit(REF, 1, "w1", rows(3, 8), 8);
    expect(r).toEqual({ committed: 3, skipped: 3, checkpoint: { epoch: 1, seq: 8 } });
    // A full redelivery at a new epoch after fail-over.
    await sink.fence(REF, 2);
    const r2 = await sink.commit(REF, 2, "w2", rows(1, 8), 8);
    expect(r2).toEqual({ committed: 0, skipped: 8, checkpoint: { epoch: 2, seq: 8 } });
    const seqs = table().map((x) => x.source_seq);
    expect(seqs).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    expect(new Set(seqs).size).toBe(seqs.length);
  });

  it("advances the checkpoint to lastSeq even when there are no rows (dead letters only)", async () => {
    const sink = open();
    await sink.fence(REF, 1);
    await sink.commit(REF, 1, "w1", rows(1, 2), 2);
    const r = await sink.commit(REF, 1, "w1", [], 9);
    expect(r).toEqual({ committed: 0, skipped: 0, checkpoint: { epoch: 1, seq: 9 } });
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 1, seq: 9 });
    // Rows at or below the new checkpoint are now redeliveries.
    expect((await sink.commit(REF, 1, "w1", [row(9)], 9)).skipped).toBe(1);
    // The checkpoint never goes back.
    const back = await sink.commit(REF, 1, "w1", [], 4);
    expect(back.checkpoint).toEqual({ epoch: 1, seq: 9 });
    expect(table()).toHaveLength(2);
  });

  it("keeps the fingerprint of the checkpoint's record, through fences and across reopen", async () => {
    const sink = open();
    await sink.fence(REF, 1);
    await sink.commit(REF, 1, "w1", rows(1, 4), 4, { fingerprint: "id-4" });
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 1, seq: 4, fingerprint: "id-4" });
    expect(await sink.fence(REF, 2)).toEqual({ epoch: 2, seq: 4, fingerprint: "id-4" });
    // A batch ending below the checkpoint (a reconciliation) keeps the checkpoint's fingerprint.
    await sink.commit(REF, 2, "w2", [], 3, { fingerprint: "other", belowCheckpoint: true });
    await sink.close();
    expect(await open().checkpoint(REF)).toEqual({ epoch: 2, seq: 4, fingerprint: "id-4" });
  });

  it("reconciles below the checkpoint only when asked, and lists record ids by sequence", async () => {
    const sink = open();
    await sink.fence(REF, 1);
    await sink.commit(REF, 1, "w1", rows(1, 6), 6, { fingerprint: "id-6" });
    expect((await sink.recordIds(REF, 4)).sort()).toEqual(["id-4", "id-5", "id-6"]);
    expect(await sink.recordIds({ pipeline: "demo", shard: 9 }, 0)).toEqual([]);
    const displaced: SinkRow = { ...row(3), recordId: "late", key: "k" };
    // Without the option, a row below the checkpoint is a redelivery.
    expect((await sink.commit(REF, 1, "w1", [displaced], 3)).committed).toBe(0);
    const r = await sink.commit(REF, 1, "w1", [displaced], 3, { belowCheckpoint: true });
    expect(r).toEqual({ committed: 1, skipped: 0, checkpoint: { epoch: 1, seq: 6, fingerprint: "id-6" } });
    expect(table().map((x) => x.record_id)).toContain("late");
  });

  it("keeps shards and pipelines independent", async () => {
    const sink = open({ pipelines: ["demo", "orders"] });
    const other: ShardRef = { pipeline: "demo", shard: 4 };
    const orders: ShardRef = { pipeline: "orders", shard: 3 };
    await sink.fence(REF, 7);
    await sink.fence(other, 1);
    await sink.fence(orders, 1);
    await sink.commit(other, 1, "w1", rows(1, 2), 2);
    await sink.commit(orders, 1, "w1", rows(1, 1), 1);
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 7, seq: 0 });
    expect(await sink.checkpoint(other)).toEqual({ epoch: 1, seq: 2 });
    expect(table("orders")).toHaveLength(1);
    expect(table("demo").map((r) => r.shard)).toEqual([4, 4]);
  });

  it("creates the table of a pipeline it was not opened with on first commit", async () => {
    const sink = open({ pipelines: [] });
    const ref: ShardRef = { pipeline: "late", shard: 0 };
    await sink.fence(ref, 1);
    expect((await sink.commit(ref, 1, "w1", rows(1, 2), 2)).committed).toBe(2);
    expect(table("late")).toHaveLength(2);
  });

  it("two sinks on one file: after B fences at 2, A's commit at 1 fails and leaves no row", async () => {
    const a = open();
    const b = open();
    await a.fence(REF, 1);
    await a.commit(REF, 1, "wA", rows(1, 3), 3);
    expect(await b.fence(REF, 2)).toEqual({ epoch: 2, seq: 3 });
    // A is a zombie: its whole batch is rejected, none of it lands.
    await expectCode(a.commit(REF, 1, "wA", rows(4, 10), 10), ErrorCode.Fenced);
    expect(
      table()
        .filter((r) => r.worker === "wA")
        .map((r) => r.source_seq),
    ).toEqual([1, 2, 3]);
    // A cannot re-fence below B either.
    await expectCode(a.fence(REF, 1), ErrorCode.Fenced);
    // B continues from the shared checkpoint, and A sees B's fence.
    expect((await b.commit(REF, 2, "wB", rows(4, 6), 6)).committed).toBe(3);
    expect(await a.checkpoint(REF)).toEqual({ epoch: 2, seq: 6 });
    expect(table().map((r) => [r.source_seq, r.worker, r.epoch])).toEqual([
      [1, "wA", 1],
      [2, "wA", 1],
      [3, "wA", 1],
      [4, "wB", 2],
      [5, "wB", 2],
      [6, "wB", 2],
    ]);
  });

  it("overlapping commits through two connections at one epoch write each sequence once", async () => {
    const a = open();
    const b = open();
    await a.fence(REF, 1);
    const results = await Promise.all([
      a.commit(REF, 1, "wA", rows(1, 50), 50),
      b.commit(REF, 1, "wA", rows(1, 50), 50),
      a.commit(REF, 1, "wA", rows(40, 60), 60),
    ]);
    expect(results.reduce((s, r) => s + r.committed, 0)).toBe(60);
    const seqs = table().map((r) => r.source_seq);
    expect(seqs).toHaveLength(60);
    expect(new Set(seqs).size).toBe(60);
  });

  it("a closed sink rejects fences and commits with UNAVAILABLE; close is idempotent", async () => {
    const sink = open();
    await sink.fence(REF, 1);
    await sink.commit(REF, 1, "w1", rows(1, 1), 1);
    await sink.close();
    await sink.close();
    const err = await expectCode(sink.commit(REF, 1, "w1", rows(2, 2), 2), ErrorCode.Unavailable);
    expect(err.retryable).toBe(false);
    await expectCode(sink.fence(REF, 2), ErrorCode.Unavailable);
    expect(table().map((r) => r.source_seq)).toEqual([1]);
  });

  it("a closed sink rejects the first commit of a pipeline with UNAVAILABLE", async () => {
    const sink = open();
    await sink.fence(REF, 1);
    await sink.close();
    await expectCode(sink.commit(REF, 1, "w1", rows(1, 1), 1), ErrorCode.Unavailable);
  });

  it("quotes pipeline names safely", async () => {
    const sink = open({ pipelines: ['we"ird'] });
    const ref: ShardRef = { pipeline: 'we"ird', shard: 0 };
    await sink.fence(ref, 1);
    await sink.commit(ref, 1, "w1", rows(1, 1), 1);
    const n = reader().prepare(`SELECT COUNT(*) AS n FROM "we""ird"`).get() as { n: number };
    expect(n.n).toBe(1);
  });
});
