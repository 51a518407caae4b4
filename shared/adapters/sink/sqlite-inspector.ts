/**
 * The read side of the SQLite sink (`SinkInspector`): opens the file read-only, so tools can
 * read while the sink process writes (WAL mode lets readers and the writer run at once).
 */
import Database from "better-sqlite3";
import type {
  AuditedBatch,
  CommittedRow,
  LateRecord,
  MergeRow,
  RowQuery,
  ShardCheckpoint,
  SinkInspector,
} from "../../contract/ports.js";
import {
  auditedBatch,
  type BatchRecord,
  checkpointOf,
  type LateRow,
  lateRecord,
  type MergeRecord,
  mergeRow,
  quoteIdent,
} from "./sink-tables.js";

interface RowRecord {
  row_id: number;
  record_id: string;
  key: string;
  shard: number;
  source_seq: number;
  epoch: number;
  worker: string;
  committed_at: number;
  payload?: string;
  lineage?: string | null;
  late?: number;
}

export class SqliteSinkInspector implements SinkInspector {
  private db: Database.Database | null = null;

  constructor(readonly path: string) {}

  /** The file, opened on first use; null while it does not exist yet (no sink has started). */
  private open(): Database.Database | null {
    if (this.db) return this.db;
    try {
      this.db = new Database(this.path, { readonly: true, fileMustExist: true });
    } catch {
      return null;
    }
    return this.db;
  }

  private hasTable(db: Database.Database, name: string): boolean {
    return (
      db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(name) !== undefined
    );
  }

  async checkpoints(): Promise<ShardCheckpoint[]> {
    const db = this.open();
    if (!db || !this.hasTable(db, "sluice_checkpoints")) return [];
    // Every column: a file from before a column was added lacks it, and reads as without.
    const rows = db.prepare("SELECT * FROM sluice_checkpoints").all() as Array<{
      pipeline: string;
      shard: number;
      epoch: number;
      seq: number;
      fingerprint?: string | null;
      state?: string | null;
    }>;
    return rows.map((r) => ({
      pipeline: r.pipeline,
      shard: r.shard,
      ...checkpointOf({ ...r, fingerprint: r.fingerprint ?? null }),
    }));
  }

  async rowCount(pipeline: string): Promise<number> {
    const db = this.open();
    if (!db || !this.hasTable(db, pipeline)) return 0;
    return (db.prepare(`SELECT COUNT(*) AS n FROM ${quoteIdent(pipeline)}`).get() as { n: number }).n;
  }

  async mergeRows(merge: string): Promise<MergeRow[]> {
    const db = this.open();
    if (!db || !this.hasTable(db, merge)) return [];
    return (db.prepare(`SELECT * FROM ${quoteIdent(merge)} ORDER BY key`).all() as MergeRecord[]).map(
      mergeRow,
    );
  }

  async lateRecords(pipeline: string): Promise<LateRecord[]> {
    const db = this.open();
    if (!db || !this.hasTable(db, "sluice_late")) return [];
    const rows = db
      .prepare("SELECT * FROM sluice_late WHERE pipeline = ? ORDER BY shard, source_seq")
      .all(pipeline) as LateRow[];
    return rows.map(lateRecord);
  }

  async batches(pipeline: string, q: { shard?: number } = {}): Promise<AuditedBatch[]> {
    const db = this.open();
    if (!db || !this.hasTable(db, "sluice_batches")) return [];
    const rows = db
      .prepare(
        `SELECT * FROM sluice_batches WHERE pipeline = ?${q.shard === undefined ? "" : " AND shard = ?"} ORDER BY rowid`,
      )
      .all(...(q.shard === undefined ? [pipeline] : [pipeline, q.shard])) as BatchRecord[];
    return rows.map(auditedBatch);
  }

  async rows(pipeline: string, q: RowQuery = {}): Promise<CommittedRow[]> {
    const db = this.open();
    if (!db || !this.hasTable(db, pipeline)) return [];
    const where: string[] = [];
    const args: number[] = [];
    if (q.shard !== undefined) {
      where.push("shard = ?");
      args.push(q.shard);
    }
    if (q.sinceMs !== undefined) {
      where.push("committed_at >= ?");
      args.push(q.sinceMs);
    }
    const cols = `row_id, record_id, key, shard, source_seq, epoch, worker, committed_at${q.values ? ", payload, lineage, late" : ""}`;
    const sql = `SELECT ${cols} FROM ${quoteIdent(pipeline)}${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY row_id`;
    return (db.prepare(sql).all(...args) as RowRecord[]).map((r) => ({
      recordId: r.record_id,
      key: r.key,
      shard: r.shard,
      sourceSeq: r.source_seq,
      epoch: r.epoch,
      worker: r.worker,
      committedAt: r.committed_at,
      order: r.row_id,
      ...(r.payload === undefined ? {} : { value: JSON.parse(r.payload) as Record<string, unknown> }),
      ...(typeof r.lineage === "string" ? { lineage: JSON.parse(r.lineage) as Record<string, number> } : {}),
      ...(r.late ? { late: true } : {}),
    }));
  }

  async close(): Promise<void> {
    this.db?.close();
    this.db = null;
  }
}
