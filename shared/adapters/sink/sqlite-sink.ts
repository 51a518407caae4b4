/**
 * The embedded default sink: one SQLite file shared by every worker process on the host.
 *
 * Exactly-once rests here. Each fence and commit is one `BEGIN IMMEDIATE` transaction in which
 * the sink rules of `core/sink-rules.ts` run against this file's storage: read the shard's
 * checkpoint, refuse a lower epoch (a zombie writer), skip sequences already committed (a
 * redelivery), append the rest and move the checkpoint. Rows and checkpoint therefore always
 * agree, and a record is written at most once per source sequence whatever the crashes,
 * pauses or duplicated deliveries.
 *
 * The database lock is taken with a short busy timeout and retried asynchronously, so a
 * worker waiting for the lock keeps its event loop (and heartbeats) running.
 */
import Database from "better-sqlite3";
import pRetry, { AbortError } from "p-retry";
import { payloadJson } from "../../contract/codec.js";
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import type { ShardRef } from "../../contract/ownership.js";
import type { Checkpoint, CommitOptions, CommitResult, Sink, SinkRow } from "../../contract/ports.js";
import type { MergePolicy } from "../../core/merge-policy.js";
import {
  applyCommit,
  applyFence,
  dedupeExpiry,
  dedupeRows,
  type SinkTransaction,
} from "../../core/sink-rules.js";
import {
  checkpointOf,
  collapseByKey,
  lateAsMergeRows,
  type MergeBranches,
  type PendingLate,
  quoteIdent,
  type ReconcileReport,
  sideOutputTable,
  type TableMode,
} from "./sink-tables.js";

export interface SqliteSinkOptions {
  /** Pipelines whose tables are created on open, and how each keeps its rows (default append). */
  pipelines: ReadonlyArray<string | { name: string; mode?: TableMode }>;
  /** How long one attempt waits for the write lock, ms. */
  busyTimeoutMs?: number;
  /** How long, in total, a commit keeps retrying a busy database before failing, ms. */
  lockDeadlineMs?: number;
  /** Wall clock for `committed_at`, ms. */
  now?: () => number;
}

export class SqliteSink implements Sink {
  private readonly db: Database.Database;
  private readonly now: () => number;
  private readonly lockDeadlineMs: number;
  private readonly inserts = new Map<string, Database.Statement>();
  /** Merge table and policy -> its upsert. */
  private readonly merges = new Map<string, Database.Statement>();
  private readonly modes = new Map<string, TableMode>();
  private readonly idQueries = new Map<string, Database.Statement<[number, number], { record_id: string }>>();
  private readonly getCp: Database.Statement<
    [string, number],
    { epoch: number; seq: number; fingerprint: string | null; state: string | null }
  >;
  private readonly putCp: Database.Statement;
  private closed = false;
  /** This file's storage, for the sink rules; used only inside `tx`. */
  private readonly storage: SinkTransaction<SinkRow>;

  constructor(
    readonly path: string,
    opts: SqliteSinkOptions,
  ) {
    this.db = new Database(path, { timeout: opts.busyTimeoutMs ?? 25 });
    this.now = opts.now ?? Date.now;
    this.lockDeadlineMs = opts.lockDeadlineMs ?? 120_000;
    for (const p of opts.pipelines) if (typeof p !== "string") this.modes.set(p.name, p.mode ?? "append");
    this.withBusyRetrySync(() => {
      this.db.pragma("journal_mode = WAL");
      this.db.pragma("synchronous = NORMAL");
      this.db.exec(`CREATE TABLE IF NOT EXISTS sluice_checkpoints (
        pipeline TEXT NOT NULL, shard INTEGER NOT NULL, epoch INTEGER NOT NULL, seq INTEGER NOT NULL,
        updated_at INTEGER NOT NULL, PRIMARY KEY (pipeline, shard))`);
      const cols = this.db.prepare("PRAGMA table_info(sluice_checkpoints)").all() as { name: string }[];
      if (!cols.some((c) => c.name === "fingerprint"))
        this.db.exec("ALTER TABLE sluice_checkpoints ADD COLUMN fingerprint TEXT");
      if (!cols.some((c) => c.name === "state"))
        this.db.exec("ALTER TABLE sluice_checkpoints ADD COLUMN state TEXT");
      // Business keys committed within a pipeline's dedupe window (see `dedupe`).
      this.db.exec(`CREATE TABLE IF NOT EXISTS sluice_dedupe (
        pipeline TEXT NOT NULL, dkey TEXT NOT NULL, seen_ms INTEGER NOT NULL, PRIMARY KEY (pipeline, dkey))`);
      this.db.exec("CREATE INDEX IF NOT EXISTS sluice_dedupe_seen ON sluice_dedupe (pipeline, seen_ms)");
      this.db.exec(SQLITE_BATCHES_DDL);
      this.db.exec(SQLITE_LATE_DDL);
      for (const p of opts.pipelines) {
        const name = typeof p === "string" ? p : p.name;
        SqliteSink.createPipelineTable(this.db, name, this.modes.get(name));
      }
    });
    this.getCp = this.db.prepare(
      "SELECT epoch, seq, fingerprint, state FROM sluice_checkpoints WHERE pipeline = ? AND shard = ?",
    );
    this.putCp =
      this.db.prepare(`INSERT INTO sluice_checkpoints (pipeline, shard, epoch, seq, fingerprint, state, updated_at)
      VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (pipeline, shard) DO UPDATE SET epoch = excluded.epoch,
      seq = excluded.seq, fingerprint = excluded.fingerprint, state = excluded.state,
      updated_at = excluded.updated_at`);
    const getMark = this.db.prepare<[string, string], { seen_ms: number }>(
      "SELECT seen_ms FROM sluice_dedupe WHERE pipeline = ? AND dkey = ?",
    );
    const putMark = this.db.prepare(`INSERT INTO sluice_dedupe (pipeline, dkey, seen_ms) VALUES (?, ?, ?)
      ON CONFLICT (pipeline, dkey) DO UPDATE SET seen_ms = excluded.seen_ms`);
    const expire = this.db.prepare("DELETE FROM sluice_dedupe WHERE pipeline = ? AND seen_ms < ?");
    const putBatch = this.db.prepare(`INSERT INTO sluice_batches (pipeline, shard, epoch, worker,
      first_seq, last_seq, rows_written, late, dead_lettered, deduplicated, config_revision, committed_at)
      VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`);
    const putLate = this.db.prepare(`INSERT INTO sluice_late (pipeline, shard, source_seq, record_id,
      event_time, watermark, reconciled, committed_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?)`);
    this.storage = {
      writeBatch: (ref, b) =>
        void putBatch.run(
          ref.pipeline,
          ref.shard,
          b.epoch,
          b.worker,
          b.firstSeq,
          b.lastSeq,
          b.rows,
          b.late,
          b.deadLettered,
          b.deduplicated,
          b.configRevision,
          this.now(),
        ),
      // Inside the commit's BEGIN IMMEDIATE: marks, rows and checkpoint land together or not at all.
      dedupe: (ref, rows, windowMs) => {
        const keep = dedupeRows(
          rows,
          windowMs,
          (k) => getMark.get(ref.pipeline, k)?.seen_ms,
          (k, at) => putMark.run(ref.pipeline, k, at),
        );
        expire.run(ref.pipeline, dedupeExpiry(rows, windowMs));
        return keep;
      },
      readCheckpoint: (ref) => this.readCp(ref),
      writeRows: (ref, epoch, worker, rows) => {
        const at = this.now();
        const upsert = this.modes.get(ref.pipeline) === "upsert";
        // Upsert: the newest row per key, in key order (see `collapseByKey`); one statement each.
        for (const r of upsert ? collapseByKey(rows) : rows) {
          const table = r.output === undefined ? ref.pipeline : sideOutputTable(ref.pipeline, r.output);
          const payload = payloadJson(r.value);
          this.insertFor(table, ref.pipeline).run(
            r.recordId,
            r.key,
            ref.shard,
            r.sourceSeq,
            epoch,
            worker,
            payload,
            at,
            r.lineage === undefined ? null : JSON.stringify(r.lineage),
            r.late === undefined ? 0 : 1,
          );
          if (r.late !== undefined)
            putLate.run(
              ref.pipeline,
              ref.shard,
              r.sourceSeq,
              r.recordId,
              r.late.eventTime,
              r.late.watermark,
              at,
            );
          // The merge gets every record of the batch, so an upsert's collapsed ones go after.
          if (!upsert) this.applyMerge(ref, r, at, payload);
        }
        if (upsert) for (const r of rows) this.applyMerge(ref, r, at);
      },
      writeCheckpoint: (ref, cp) =>
        this.putCp.run(
          ref.pipeline,
          ref.shard,
          cp.epoch,
          cp.seq,
          cp.fingerprint ?? null,
          cp.state === undefined ? null : JSON.stringify(cp.state),
          this.now(),
        ),
    };
  }

  /**
   * Append-only table of a pipeline: no unique key, so a duplicate would be visible. The
   * (shard, source_seq) index serves reconciliation (`recordIds`) and readers' range queries;
   * rows arrive in sequence order per shard, so it grows at its right edge.
   */
  static createPipelineTable(db: Database.Database, pipeline: string, mode: TableMode = "append"): void {
    // Upsert tables keep one row per key, the newest by `version` (its source sequence).
    db.exec(`CREATE TABLE IF NOT EXISTS ${quoteIdent(pipeline)} (
      row_id INTEGER PRIMARY KEY, record_id TEXT NOT NULL, key TEXT NOT NULL${mode === "upsert" ? " UNIQUE" : ""},
      shard INTEGER NOT NULL, source_seq INTEGER NOT NULL, epoch INTEGER NOT NULL, worker TEXT NOT NULL,
      payload TEXT NOT NULL, committed_at INTEGER NOT NULL${mode === "upsert" ? ", version INTEGER NOT NULL" : ""},
      lineage TEXT, late INTEGER NOT NULL DEFAULT 0)`);
    // A table made before rows carried lineage (the reference revisions an enrichment used) or a
    // late flag (true for a record late by its event time).
    const cols = db.prepare(`PRAGMA table_info(${quoteIdent(pipeline)})`).all() as { name: string }[];
    if (!cols.some((c) => c.name === "lineage"))
      db.exec(`ALTER TABLE ${quoteIdent(pipeline)} ADD COLUMN lineage TEXT`);
    if (!cols.some((c) => c.name === "late"))
      db.exec(`ALTER TABLE ${quoteIdent(pipeline)} ADD COLUMN late INTEGER NOT NULL DEFAULT 0`);
    db.exec(
      `CREATE INDEX IF NOT EXISTS ${quoteIdent(`${pipeline}_shard_seq`)} ON ${quoteIdent(pipeline)} (shard, source_seq)`,
    );
  }

  /** Applies the rows bound for a merge to its table, each only if it ranks higher (`MergeApply`). */
  private applyMerges(ref: ShardRef, rows: readonly SinkRow[], at: number): void {
    for (const r of rows) this.applyMerge(ref, r, at);
  }

  /** `r` applied to its merge's table (when it is bound for one), `payload` its value's JSON. */
  private applyMerge(ref: ShardRef, r: SinkRow, at: number, payload?: string): void {
    const m = r.merge;
    if (m === undefined || r.output !== undefined) return;
    this.mergeUpsert(m.into, m.policy).run(
      r.key,
      r.recordId,
      ref.pipeline,
      ref.shard,
      r.sourceSeq,
      m.eventTime,
      m.priority,
      payload ?? payloadJson(r.value),
      at,
    );
  }

  private mergeUpsert(table: string, policy: MergePolicy): Database.Statement {
    const k = `${table}\u0000${policy}`;
    let st = this.merges.get(k);
    if (!st) {
      const t = quoteIdent(table);
      this.db.exec(sqliteMergeTableDdl(table));
      // The policy's order as a row value: SQLite compares them left to right, text as bytes.
      const rank = (x: string) =>
        policy === "latest"
          ? `(${x}.event_time, ${x}.priority, ${x}.record_id)`
          : `(${x}.priority, ${x}.event_time, ${x}.record_id)`;
      st = this.db.prepare(`INSERT INTO ${t}
        (key, record_id, pipeline, shard, source_seq, event_time, priority, payload, updated_at)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT (key) DO UPDATE SET record_id = excluded.record_id, pipeline = excluded.pipeline,
          shard = excluded.shard, source_seq = excluded.source_seq, event_time = excluded.event_time,
          priority = excluded.priority, payload = excluded.payload, updated_at = excluded.updated_at
        WHERE ${rank("excluded")} > ${rank(t)}`);
      this.merges.set(k, st);
    }
    return st;
  }

  private insertFor(table: string, pipeline = table): Database.Statement {
    let st = this.inserts.get(table);
    if (!st) {
      const mode = this.modes.get(pipeline) ?? "append";
      SqliteSink.createPipelineTable(this.db, table, mode);
      const t = quoteIdent(table);
      st =
        mode === "upsert"
          ? this.db.prepare(`INSERT INTO ${t}
        (record_id, key, shard, source_seq, epoch, worker, payload, committed_at, lineage, late, version)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?4)
        ON CONFLICT (key) DO UPDATE SET record_id = excluded.record_id, shard = excluded.shard,
          source_seq = excluded.source_seq, epoch = excluded.epoch, worker = excluded.worker,
          payload = excluded.payload, committed_at = excluded.committed_at, lineage = excluded.lineage,
          late = excluded.late, version = excluded.version
        WHERE ${t}.version < excluded.version`)
          : this.db.prepare(`INSERT INTO ${t}
        (record_id, key, shard, source_seq, epoch, worker, payload, committed_at, lineage, late) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`);
      this.inserts.set(table, st);
    }
    return st;
  }

  private readCp(ref: ShardRef): Checkpoint {
    const row = this.getCp.get(ref.pipeline, ref.shard);
    if (!row) return { epoch: 0, seq: 0 };
    return checkpointOf(row);
  }

  private withBusyRetrySync<T>(fn: () => T): T {
    const deadline = Date.now() + this.lockDeadlineMs;
    for (;;) {
      try {
        return fn();
      } catch (err) {
        if (!isBusy(err) || Date.now() > deadline) throw err;
      }
    }
  }

  /** Runs `fn` in an immediate transaction, retrying (without blocking the loop) while locked. */
  private async tx<T>(fn: () => T): Promise<T> {
    this.assertOpen();
    const run = this.db.transaction(fn);
    return pRetry(
      () => {
        try {
          return run.immediate();
        } catch (err) {
          if (isBusy(err))
            throw new SluiceError(ErrorCode.Unavailable, "sink database is locked", {
              retryable: true,
              cause: err,
            });
          // Fenced, conflict or a real database error: retrying cannot help.
          throw new AbortError(err instanceof Error ? err : String(err));
        }
      },
      {
        retries: Number.POSITIVE_INFINITY,
        minTimeout: 2,
        maxTimeout: 50,
        factor: 1.5,
        randomize: true,
        maxRetryTime: this.lockDeadlineMs,
      },
    );
  }

  async fence(ref: ShardRef, epoch: number): Promise<Checkpoint> {
    return this.tx(() => applyFence(this.storage, ref, epoch));
  }

  private assertOpen(): void {
    if (this.closed) throw new SluiceError(ErrorCode.Unavailable, "sink is closed", { retryable: false });
  }

  async commit(
    ref: ShardRef,
    epoch: number,
    worker: string,
    rows: SinkRow[],
    lastSeq: number,
    opts: CommitOptions = {},
  ): Promise<CommitResult> {
    this.assertOpen();
    // Tables are created outside the write transaction's hot path (once per table).
    this.insertFor(ref.pipeline);
    return this.tx(() => applyCommit(this.storage, ref, epoch, worker, rows, lastSeq, opts));
  }

  async checkpoint(ref: ShardRef): Promise<Checkpoint> {
    this.assertOpen();
    return this.readCp(ref);
  }

  /**
   * Applies every pending late record of the merge's branches to its table by the policy and
   * marks it reconciled, in one transaction. After it the table is what it would be had every
   * record come on time (the policy is a total order); a second run finds nothing pending.
   */
  async reconcileLate(m: MergeBranches): Promise<ReconcileReport> {
    return this.tx(() => {
      let reconciled = 0;
      const at = this.now();
      for (const b of m.branches) {
        this.insertFor(b.pipeline);
        const pending = this.db
          .prepare(
            `SELECT l.shard, l.source_seq, l.record_id, l.event_time, t.key, t.payload
             FROM sluice_late l JOIN ${quoteIdent(b.pipeline)} t
               ON t.shard = l.shard AND t.source_seq = l.source_seq AND t.record_id = l.record_id
             WHERE l.pipeline = ? AND l.reconciled = 0`,
          )
          .all(b.pipeline) as PendingLate[];
        for (const [shard, rows] of lateAsMergeRows(m, b.priority, pending))
          this.applyMerges({ pipeline: b.pipeline, shard }, rows, at);
        this.db
          .prepare("UPDATE sluice_late SET reconciled = 1 WHERE pipeline = ? AND reconciled = 0")
          .run(b.pipeline);
        reconciled += pending.length;
      }
      return { merge: m.merge, reconciled };
    });
  }

  async recordIds(ref: ShardRef, fromSeq: number): Promise<string[]> {
    this.assertOpen();
    this.insertFor(ref.pipeline);
    let q = this.idQueries.get(ref.pipeline);
    if (!q) {
      q = this.db.prepare(
        `SELECT record_id FROM ${quoteIdent(ref.pipeline)} WHERE shard = ? AND source_seq >= ?`,
      ) as Database.Statement<[number, number], { record_id: string }>;
      this.idQueries.set(ref.pipeline, q);
    }
    return q.all(ref.shard, fromSeq).map((r) => r.record_id);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.db.close();
  }
}

function isBusy(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return code === "SQLITE_BUSY" || code === "SQLITE_LOCKED" || code === "SQLITE_BUSY_SNAPSHOT";
}

/**
 * The audit table: one row per commit that took in records (`BatchAuditRow`), in the commit's
 * transaction. With a row's (pipeline, shard, source_seq) every output row traces to its batch.
 */
/**
 * The late table: one row per record committed late by its event time, in the commit's
 * transaction: where it is (pipeline, shard, source_seq), its record id, its event time and the
 * watermark that made it late (ms), and whether it was reconciled since.
 */
const SQLITE_LATE_DDL = `CREATE TABLE IF NOT EXISTS sluice_late (
  pipeline TEXT NOT NULL, shard INTEGER NOT NULL, source_seq INTEGER NOT NULL,
  record_id TEXT NOT NULL, event_time INTEGER NOT NULL, watermark INTEGER NOT NULL,
  reconciled INTEGER NOT NULL DEFAULT 0, committed_at INTEGER NOT NULL);
  CREATE INDEX IF NOT EXISTS sluice_late_pending ON sluice_late (pipeline, reconciled, shard, source_seq)`;

/**
 * A merge's table: one row per key, the branch record ranked highest by the merge's policy, and
 * where it came from (branch pipeline, shard, source sequence, record id).
 */
export const sqliteMergeTableDdl = (
  table: string,
): string => `CREATE TABLE IF NOT EXISTS ${quoteIdent(table)} (
  key TEXT PRIMARY KEY, record_id TEXT NOT NULL, pipeline TEXT NOT NULL, shard INTEGER NOT NULL,
  source_seq INTEGER NOT NULL, event_time INTEGER NOT NULL, priority INTEGER NOT NULL,
  payload TEXT NOT NULL, updated_at INTEGER NOT NULL)`;

const SQLITE_BATCHES_DDL = `CREATE TABLE IF NOT EXISTS sluice_batches (
  pipeline TEXT NOT NULL, shard INTEGER NOT NULL, epoch INTEGER NOT NULL, worker TEXT NOT NULL,
  first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL, rows_written INTEGER NOT NULL,
  late INTEGER NOT NULL, dead_lettered INTEGER NOT NULL, deduplicated INTEGER NOT NULL,
  config_revision TEXT NOT NULL, committed_at INTEGER NOT NULL);
  CREATE INDEX IF NOT EXISTS sluice_batches_shard_seq ON sluice_batches (pipeline, shard, last_seq)`;
