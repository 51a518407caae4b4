/** The read side of the PostgreSQL sink (`SinkInspector`), over a pool of its own. */
import type { Pool } from "pg";
import type {
  AuditedBatch,
  CommittedRow,
  LateRecord,
  MergeRow,
  RowQuery,
  ShardCheckpoint,
  SinkInspector,
} from "../../contract/ports.js";
import { pgError } from "./postgres-sink.js";
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
  row_id: string;
  record_id: string;
  key: string;
  shard: number;
  source_seq: string;
  epoch: string;
  worker: string;
  committed_at: string;
  payload?: Record<string, unknown>;
  lineage?: Record<string, number> | null;
  late?: boolean;
}

export class PostgresSinkInspector implements SinkInspector {
  constructor(
    private readonly pool: Pool,
    /** Closes the pool with the inspector (when the inspector made it). */
    private readonly ownsPool = false,
  ) {}

  private async hasTable(name: string): Promise<boolean> {
    const r = await this.pool.query("SELECT to_regclass($1) IS NOT NULL AS ok", [quoteIdent(name)]);
    return r.rows[0]?.ok === true;
  }

  async checkpoints(): Promise<ShardCheckpoint[]> {
    try {
      if (!(await this.hasTable("sluice_checkpoints"))) return [];
      const r = await this.pool.query<{
        pipeline: string;
        shard: number;
        epoch: string;
        seq: string;
        fingerprint: string | null;
        state?: string | null;
      }>("SELECT * FROM sluice_checkpoints");
      return r.rows.map((x) => ({ pipeline: x.pipeline, shard: x.shard, ...checkpointOf(x) }));
    } catch (err) {
      throw pgError("checkpoints", err);
    }
  }

  async rowCount(pipeline: string): Promise<number> {
    try {
      if (!(await this.hasTable(pipeline))) return 0;
      const r = await this.pool.query<{ n: string }>(`SELECT count(*) AS n FROM ${quoteIdent(pipeline)}`);
      return Number(r.rows[0]?.n ?? 0);
    } catch (err) {
      throw pgError("row count", err);
    }
  }

  async mergeRows(merge: string): Promise<MergeRow[]> {
    try {
      if (!(await this.hasTable(merge))) return [];
      const r = await this.pool.query<MergeRecord>(`SELECT * FROM ${quoteIdent(merge)} ORDER BY key`);
      return r.rows.map(mergeRow);
    } catch (err) {
      throw pgError("merge rows", err);
    }
  }

  async lateRecords(pipeline: string): Promise<LateRecord[]> {
    try {
      if (!(await this.hasTable("sluice_late"))) return [];
      const r = await this.pool.query<LateRow>(
        "SELECT * FROM sluice_late WHERE pipeline = $1 ORDER BY shard, source_seq",
        [pipeline],
      );
      return r.rows.map(lateRecord);
    } catch (err) {
      throw pgError("late records", err);
    }
  }

  async batches(pipeline: string, q: { shard?: number } = {}): Promise<AuditedBatch[]> {
    try {
      if (!(await this.hasTable("sluice_batches"))) return [];
      const r = await this.pool.query<BatchRecord>(
        `SELECT * FROM sluice_batches WHERE pipeline = $1${q.shard === undefined ? "" : " AND shard = $2"} ORDER BY batch_id`,
        q.shard === undefined ? [pipeline] : [pipeline, q.shard],
      );
      return r.rows.map(auditedBatch);
    } catch (err) {
      throw pgError("batches", err);
    }
  }

  async rows(pipeline: string, q: RowQuery = {}): Promise<CommittedRow[]> {
    try {
      if (!(await this.hasTable(pipeline))) return [];
      const where: string[] = [];
      const args: number[] = [];
      if (q.shard !== undefined) {
        args.push(q.shard);
        where.push(`shard = $${args.length}`);
      }
      if (q.sinceMs !== undefined) {
        args.push(q.sinceMs);
        where.push(`committed_at >= $${args.length}`);
      }
      const cols = `row_id, record_id, key, shard, source_seq, epoch, worker, committed_at${q.values ? ", payload, lineage, late" : ""}`;
      const r = await this.pool.query<RowRecord>(
        `SELECT ${cols} FROM ${quoteIdent(pipeline)}${where.length ? ` WHERE ${where.join(" AND ")}` : ""} ORDER BY row_id`,
        args,
      );
      return r.rows.map((x) => ({
        recordId: x.record_id,
        key: x.key,
        shard: x.shard,
        sourceSeq: Number(x.source_seq),
        epoch: Number(x.epoch),
        worker: x.worker,
        committedAt: Number(x.committed_at),
        order: Number(x.row_id),
        ...(x.payload === undefined ? {} : { value: x.payload }),
        ...(x.lineage ? { lineage: x.lineage } : {}),
        ...(x.late ? { late: true } : {}),
      }));
    } catch (err) {
      throw pgError("rows", err);
    }
  }

  async close(): Promise<void> {
    if (this.ownsPool) await this.pool.end().catch(() => undefined);
  }
}
