import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import Database from "better-sqlite3";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { SqliteSink } from "../../shared/adapters/sink/sqlite-sink.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import type { ShardRef } from "../../shared/contract/ownership.js";
import type { SinkRow } from "../../shared/contract/ports.js";

const REF: ShardRef = { pipeline: "demo", shard: 3 };

/** A row as the worker hands it over: the record's decoded value. */
const row = (seq: number, key = `k${seq}`): SinkRow => ({
  recordId: `id-${seq}`,
  key,
  sourceSeq: seq,
  value: { seq },
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
  lineage: string | null;
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
      "lineage",
      "late",
    ]);
    // Append-only: no unique index that would silently hide a duplicate.
    const idx = reader().prepare(`PRAGMA index_list("demo")`).all() as { unique: number }[];
    expect(idx.filter((i) => i.unique === 1)).toEqual([]);
  });

  it("a row whose value cannot be rendered fails the whole commit: no row, no checkpoint", async () => {
    const sink = open();
    await sink.fence(REF, 1);
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const bad: SinkRow = { ...row(2), value: cyclic };
    const err = await expectCode(
      sink.commit(REF, 1, "w1", [row(1), bad, row(3)], 3),
      ErrorCode.UndecodablePayload,
    );
    expect(err.retryable).toBe(false);
    expect(table()).toEqual([]);
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 1, seq: 0 });
  });

  it("stores a row's lineage (the reference revisions an enrichment used) with it", async () => {
    const sink = open();
    await sink.fence(REF, 1);
    await sink.commit(REF, 1, "w1", [{ ...row(1), lineage: { customers: 17 } }, row(2)], 2);
    expect(table().map((r) => r.lineage)).toEqual(['{"customers":17}', null]);
  });

  it("fence at 1 then commit rows: rows and checkpoint are stored together", async () => {
    const sink = open({ now: () => 4242 });
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 0, seq: 0 });
    expect(await sink.fence(REF, 1)).toEqual({ epoch: 1, seq: 0 });
    const r = await sink.commit(REF, 1, "w1", rows(1, 3), 3);
    expect(r).toEqual({ committed: 3, skipped: 0, checkpoint: { epoch: 1, seq: 3 } });
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 1, seq: 3 });
    // Each record's JSON text, rendered here from the value it was handed.
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
        lineage: null,
        late: 0,
      })),
    );
  });

  it("creates the table of a pipeline it was not opened with on first commit", async () => {
    const sink = open({ pipelines: [] });
    const ref: ShardRef = { pipeline: "late", shard: 0 };
    await sink.fence(ref, 1);
    expect((await sink.commit(ref, 1, "w1", rows(1, 2), 2)).committed).toBe(2);
    expect(table("late")).toHaveLength(2);
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

  it("a closed sink rejects the first commit of a pipeline with UNAVAILABLE", async () => {
    const sink = open();
    await sink.fence(REF, 1);
    await sink.close();
    await expectCode(sink.commit(REF, 1, "w1", rows(1, 1), 1), ErrorCode.Unavailable);
  });

  it("writes a side output's rows to the table <pipeline>__<output>, in the same transaction", async () => {
    const sink = open();
    await sink.fence(REF, 1);
    const r = await sink.commit(REF, 1, "w1", [row(1), { ...row(2), output: "late" }, row(3)], 3);
    expect(r.committed).toBe(3);
    expect(table().map((x) => x.source_seq)).toEqual([1, 3]);
    expect(table("demo__late").map((x) => [x.source_seq, x.payload])).toEqual([
      [2, JSON.stringify({ seq: 2 })],
    ]);
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
