/**
 * Table names shared by the SQL sinks: a pipeline's rows live in the table named after it, a
 * side output's (a stage routed the record there) in `<pipeline>__<output>`.
 */

import type {
  AuditedBatch,
  Checkpoint,
  LateRecord,
  MergeRow,
  PipelineState,
  SinkRow,
} from "../../contract/ports.js";

/** A SQL identifier, double-quoted (SQLite and PostgreSQL alike). */
export const quoteIdent = (ident: string): string => `"${ident.replaceAll('"', '""')}"`;

export const sideOutputTable = (pipeline: string, output: string): string => `${pipeline}__${output}`;

/** How a database sink keeps a pipeline's rows (`PipelineConfig.tableMode`). */
export type TableMode = "append" | "upsert";

/**
 * The newest row per key of a batch, in key order: what an upsert may apply in one statement
 * without touching a row twice, in an order every transaction shares.
 */
export function collapseByKey<R extends { key: string; sourceSeq: number }>(rows: readonly R[]): R[] {
  const newest = new Map<string, R>();
  for (const r of rows) {
    const cur = newest.get(r.key);
    if (!cur || cur.sourceSeq < r.sourceSeq) newest.set(r.key, r);
  }
  return [...newest.values()].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/** A checkpoint row of `sluice_checkpoints` (integers may come back as text, state as JSON text). */
export function checkpointOf(row: {
  epoch: string | number;
  seq: string | number;
  fingerprint: string | null;
  state?: string | null;
}): Checkpoint {
  const cp: { epoch: number; seq: number; fingerprint?: string; state?: PipelineState } = {
    epoch: Number(row.epoch),
    seq: Number(row.seq),
  };
  if (row.fingerprint !== null) cp.fingerprint = row.fingerprint;
  if (row.state !== null && row.state !== undefined) cp.state = JSON.parse(row.state) as PipelineState;
  return cp;
}

/** A row of `sluice_batches` as a driver returns it (PostgreSQL's bigints as text). */
export interface BatchRecord {
  pipeline: string;
  shard: number;
  epoch: string | number;
  worker: string;
  first_seq: string | number;
  last_seq: string | number;
  rows_written: number;
  late: number;
  dead_lettered: number;
  deduplicated: number;
  config_revision: string;
  committed_at: string | number;
}

export const auditedBatch = (r: BatchRecord): AuditedBatch => ({
  pipeline: r.pipeline,
  shard: r.shard,
  epoch: Number(r.epoch),
  worker: r.worker,
  firstSeq: Number(r.first_seq),
  lastSeq: Number(r.last_seq),
  rows: r.rows_written,
  late: r.late,
  deadLettered: r.dead_lettered,
  deduplicated: r.deduplicated,
  configRevision: r.config_revision,
  committedAt: Number(r.committed_at),
});

/** A row of `sluice_late` as a driver returns it (SQLite's booleans as 0/1, bigints as text). */
export interface LateRow {
  pipeline: string;
  shard: number;
  source_seq: string | number;
  record_id: string;
  event_time: string | number;
  watermark: string | number;
  reconciled: boolean | number;
  committed_at: string | number;
}

export const lateRecord = (r: LateRow): LateRecord => ({
  pipeline: r.pipeline,
  shard: r.shard,
  sourceSeq: Number(r.source_seq),
  recordId: r.record_id,
  eventTime: Number(r.event_time),
  watermark: Number(r.watermark),
  reconciled: r.reconciled === true || r.reconciled === 1,
  committedAt: Number(r.committed_at),
});

/** A row of a merge's table as a driver returns it (bigints as text, SQLite's payload as text). */
export interface MergeRecord {
  key: string;
  record_id: string;
  pipeline: string;
  shard: number;
  source_seq: string | number;
  event_time: string | number;
  priority: number;
  payload: string | Record<string, unknown>;
  updated_at: string | number;
}

export const mergeRow = (r: MergeRecord): MergeRow => ({
  key: r.key,
  recordId: r.record_id,
  pipeline: r.pipeline,
  shard: r.shard,
  sourceSeq: Number(r.source_seq),
  eventTime: Number(r.event_time),
  priority: r.priority,
  value: (typeof r.payload === "string" ? JSON.parse(r.payload) : r.payload) as MergeRow["value"],
  updatedAt: Number(r.updated_at),
});

/** A merge to reconcile, and its branches with their priorities (`sluice late reconcile`). */
export interface MergeBranches {
  merge: string;
  policy: "latest" | "priority";
  branches: ReadonlyArray<{ pipeline: string; priority: number }>;
}

/** What a reconciliation did: late records applied by the policy (a lower one changes nothing). */
export interface ReconcileReport {
  merge: string;
  reconciled: number;
}

/** A pending late record with its committed row's key and payload (the reconciliation's input). */
export interface PendingLate {
  shard: number;
  source_seq: string | number;
  record_id: string;
  event_time: string | number;
  key: string;
  payload: string | Record<string, unknown>;
}

/** The pending late records of one branch as rows bound for the merge, grouped by shard. */
export function lateAsMergeRows(
  m: MergeBranches,
  priority: number,
  pending: readonly PendingLate[],
): Map<number, SinkRow[]> {
  const byShard = new Map<number, SinkRow[]>();
  for (const l of pending) {
    let rows = byShard.get(l.shard);
    if (!rows) {
      rows = [];
      byShard.set(l.shard, rows);
    }
    rows.push({
      recordId: l.record_id,
      key: l.key,
      sourceSeq: Number(l.source_seq),
      value: (typeof l.payload === "string" ? JSON.parse(l.payload) : l.payload) as SinkRow["value"],
      merge: { into: m.merge, policy: m.policy, priority, eventTime: Number(l.event_time) },
    });
  }
  return byShard;
}
