/**
 * Narrow ports between the pure core / worker pipeline and the outside world. Each has a
 * real implementation named after its technology (JetStream*, Sqlite*) and an in-memory one
 * (Memory*) for simulation and unit tests.
 */
import type { AssignmentEntry, Heartbeat, ShardRef } from "./ownership.js";

/** One record as read from the source stream. */
export interface SourceMessage {
  /** Stream sequence, strictly increasing within the stream (and so within a shard). */
  seq: number;
  /**
   * The consumer's delivery sequence: +1 for every delivery (redeliveries included). A jump
   * means deliveries were lost in flight, so the batch must not move the checkpoint past them.
   */
  deliverySeq: number;
  subject: string;
  data: Uint8Array;
  /** Every header, first value each (read for dead letters). */
  readonly headers: Record<string, string>;
  /**
   * One header's first value, when the source can look it up without building `headers`
   * (the hot path reads two headers of every record).
   */
  header?(name: string): string | undefined;
  /** Why the header block could not be read, set once `header`/`headers` found it malformed. */
  readonly headerError?: string | undefined;
  /** When the source stored the message, ms since the epoch; absent when the source does not say. */
  readonly timestampMs?: number;
  /**
   * Messages matching the consumer still undelivered after this one, as the source reported
   * at delivery (JetStream's `num_pending`); absent when the source does not know.
   */
  pending?: number;
  /** Opaque handle the feed needs to ack this message. */
  readonly token: unknown;
}

/** A shard's messages from one epoch's consumer. */
export interface ShardFeed {
  /** Up to `max` messages; waits at most `waitMs` when none are buffered. */
  next(max: number, waitMs: number): Promise<SourceMessage[]>;
  /** Acknowledge every message up to and including `last` (AckPolicy all). Fire and forget. */
  ack(last: SourceMessage): void;
  /**
   * Ends a `next` that is waiting for messages now (it returns what is buffered, maybe
   * nothing). A drain calls it so a hand-off does not sit out the rest of a pull's wait.
   */
  wake?(): void;
  /** Set once the consumer is gone (deleted by a newer epoch) or broken; `next` then throws. */
  readonly failure: Error | null;
  close(): Promise<void>;
}

/**
 * Where a shard's consumer starts: at a stream sequence, or at the first message stored at or
 * after a wall-clock time (ms since the epoch), used to rewind when the stream's history changed.
 */
export type FeedStart = { seq: number } | { timeMs: number };

/** A consumer's in-flight bounds, records (see `shardFlow`). */
export interface FeedFlow {
  /** Unacknowledged messages the server lets the consumer hold. */
  maxAckPending: number;
  /** Messages the client keeps pulled ahead; at most `maxAckPending` minus a batch. */
  bufferMessages: number;
}

export interface ShardSource {
  /**
   * Open this epoch's consumer on the shard, delivering from `start` on, holding at most
   * `flow.maxAckPending` unacknowledged records (the source's configured bound when absent).
   */
  open(ref: ShardRef, epoch: number, start: FeedStart, flow?: FeedFlow): Promise<ShardFeed>;
  /** Delete consumers of older epochs of this shard, so a zombie's pulls fail. */
  removeOlderEpochs(ref: ShardRef, epoch: number): Promise<void>;
  /** Delete this epoch's consumer (after a graceful release). */
  remove(ref: ShardRef, epoch: number): Promise<void>;
  /**
   * The sequences the shard's stream holds now. Optional: a source that cannot tell leaves it
   * out.
   */
  bounds?(ref: ShardRef): Promise<StreamBounds>;
}

/** The sequences a stream holds: `firstSeq` to `lastSeq` (an empty stream: `lastSeq + 1` and `lastSeq`). */
export interface StreamBounds {
  /**
   * The first record it still holds. Its limits (`max_age`, `max_msgs`, `max_bytes`) and purges
   * remove records from the front, so it only grows.
   */
  firstSeq: number;
  /**
   * The last record it ever stored (0: none). It never goes down while the stream lives, so a
   * checkpoint past it was taken from another stream.
   */
  lastSeq: number;
}

/** A record's value: a map of field names to values, as decoded and left by the stages. */
export type RecordValue = Record<string, unknown>;

/** One row written to the sink per committed record. */
export interface SinkRow {
  recordId: string;
  key: string;
  sourceSeq: number;
  /**
   * The record's value as the stages left it. The decode stage has checked that it renders as
   * JSON; a sink stores it in its own format (`payloadJson` for JSON text) and renders it in its
   * own process, so a sink that discards rows never pays for rendering.
   */
  value: RecordValue;
  /** The side output a stage routed the record to; absent for the pipeline's own table. */
  output?: string;
  /**
   * Lineage: the revision of each reference entry an enrichment used, table -> KV revision
   * (absent when none was used). Stored with the row.
   */
  lineage?: Readonly<Record<string, number>>;
  /**
   * The record's business key and its time (ms since the epoch), when its pipeline deduplicates:
   * the sink keeps it only if no record with the same key was committed within the window of
   * `at` (`CommitOptions.dedupeWindowMs`), in the same transaction as the rows and checkpoint.
   */
  dedupe?: { readonly key: string; readonly at: number };
  /**
   * Present on a record late by its event time (README "Event time and late records"): its
   * event time and the shard's watermark that made it late, both ms since the epoch. The row is
   * stored with its late flag set, and recorded in the sink's late table (`sluice_late`).
   */
  late?: LateMark;
  /**
   * Present on an on-time record of a merge's branch: the sink applies it to the merge's table
   * in the same transaction, where it replaces the key's row only if it ranks higher by the
   * policy (`mergeRank`).
   */
  merge?: MergeApply;
}

/** How a branch record applies to its merge's table. */
export interface MergeApply {
  /** The merge, and its table. */
  readonly into: string;
  readonly policy: "latest" | "priority";
  /** The branch's priority. */
  readonly priority: number;
  /** The record's event time, ms. */
  readonly eventTime: number;
}

/** A row of a merge's table: the key's winning branch record, and where it came from. */
export interface MergeRow {
  key: string;
  recordId: string;
  /** The winning branch. */
  pipeline: string;
  shard: number;
  sourceSeq: number;
  eventTime: number;
  priority: number;
  value: RecordValue;
  updatedAt: number;
}

/** Why a record is late: its event time lies strictly below the watermark in force. */
export interface LateMark {
  readonly eventTime: number;
  readonly watermark: number;
}

/**
 * What a shard's stages pin with its checkpoint, for the records after it: a schema version, a
 * watermark. Flat JSON scalars by name (`schema:orders` → 3). Stored in the same transaction as
 * the checkpoint, so it moves with the shard and a redelivery or a new owner decides as before.
 */
export type PipelineState = Readonly<Record<string, string | number | boolean>>;

export interface Checkpoint {
  /** Highest epoch fenced for the shard. */
  epoch: number;
  /** Last source sequence committed (0 when nothing was). */
  seq: number;
  /**
   * Fingerprint of the message at `seq` (`messageFingerprint`), when the sink keeps one. The
   * next owner checks that the stream still holds that message at `seq` before it trusts the
   * sequence: a JetStream replica that diverged numbers the same records differently.
   */
  fingerprint?: string;
  /** The stages' pinned inputs in force after `seq` (absent: none pinned yet). */
  state?: PipelineState;
}

export interface CommitOptions {
  /** Fingerprint of the message at `lastSeq`, stored with the checkpoint. */
  fingerprint?: string;
  /** The state to store with the checkpoint (absent: the stored one is kept). */
  state?: PipelineState;
  /**
   * The pipeline's dedupe window, ms: rows carrying `dedupe` are kept only when no mark of
   * their business key lies within it; absent, nothing is deduplicated.
   */
  dedupeWindowMs?: number;
  /**
   * Reconciling after the stream's history changed: rows at or below the checkpoint's sequence
   * are written too, because the caller removed those already committed by record id. The
   * checkpoint still never moves back.
   */
  belowCheckpoint?: boolean;
  /** The batch's identity for the sink's audit table (`sluice_batches`); absent: no audit row. */
  audit?: BatchAudit;
}

/** What the worker knows of a batch that the sink's audit row records beside its own counts. */
export interface BatchAudit {
  /** Source sequence of the batch's first message. */
  firstSeq: number;
  /** Records of the batch the stages dead-lettered. */
  deadLettered: number;
  /** Records of the batch that came late by their event time. */
  late: number;
  /** Revision of the pipeline's config the batch was processed under (`configRevision`). */
  configRevision: string;
}

/**
 * One commit's row in the audit table: which records of which shard, at which epoch and by whom,
 * and what became of them. Written in the commit's transaction, only by commits that take in
 * records (not by fences, nor by commits that only move the stages' pinned state).
 */
export interface BatchAuditRow {
  epoch: number;
  worker: string;
  /** First and last source sequence the commit took in (the part above the checkpoint). */
  firstSeq: number;
  lastSeq: number;
  /** Rows written: kept and routed records, duplicates not. */
  rows: number;
  late: number;
  deadLettered: number;
  /** Records not written because their business key was committed within the window. */
  deduplicated: number;
  configRevision: string;
}

/** A record committed late by its event time, as the sink's late table holds it (`sluice_late`). */
export interface LateRecord extends LateMark {
  pipeline: string;
  shard: number;
  sourceSeq: number;
  recordId: string;
  /** Whether it was applied since (by a reconciliation). */
  reconciled: boolean;
  committedAt: number;
}

/** A commit's audit row as the sink stores it (`sluice_batches`). */
export interface AuditedBatch extends BatchAuditRow {
  pipeline: string;
  shard: number;
  /** When the sink committed it, ms since the epoch (the sink's clock). */
  committedAt: number;
}

export interface CommitResult {
  /** Rows written by this commit. */
  committed: number;
  /** Rows skipped because their sequence was already committed (a redelivery). */
  skipped: number;
  /** Rows not written because their business key was committed within the window (absent: 0). */
  duplicates?: number;
  checkpoint: Checkpoint;
}

/**
 * The fenced, atomic sink contract: rows and checkpoint in one transaction; a commit or fence
 * with an epoch lower than the shard's fenced epoch fails with `ErrorCode.Fenced`.
 */
export interface Sink {
  /** Record `epoch` as the shard's fence; fails if a higher epoch is already fenced. */
  fence(ref: ShardRef, epoch: number): Promise<Checkpoint>;
  /**
   * Append `rows` and move the checkpoint to `lastSeq` (>= any row's seq), atomically. Rows at
   * or below the checkpoint are skipped as redeliveries unless `opts.belowCheckpoint`.
   */
  commit(
    ref: ShardRef,
    epoch: number,
    worker: string,
    rows: SinkRow[],
    lastSeq: number,
    opts?: CommitOptions,
  ): Promise<CommitResult>;
  checkpoint(ref: ShardRef): Promise<Checkpoint>;
  /** Record ids committed for the shard at source sequences >= `fromSeq` (for reconciliation). */
  recordIds(ref: ShardRef, fromSeq: number): Promise<string[]>;
  close(): Promise<void>;
}

/** A checkpoint message of an output stream: the shard's checkpoint, and who wrote it. */
export interface OutputCheckpoint extends Checkpoint {
  worker: string;
}

/** A record as an output stream stores it. */
export interface OutputRecord {
  row: SinkRow;
  epoch: number;
  worker: string;
}

/**
 * The stream operations the output-stream sink needs (`OutputStreamSink`), per shard: a data
 * subject for records and a checkpoint subject whose newest message is the shard's checkpoint.
 */
export interface OutputStreamStore {
  /** The newest checkpoint message of the shard and its stream sequence; null when it has none. */
  lastCheckpoint(ref: ShardRef): Promise<{ checkpoint: Checkpoint; streamSeq: number } | null>;
  /**
   * Appends `records` then the checkpoint message `cp`, all or nothing, if the shard's newest
   * checkpoint message is still the one at stream sequence `expectAt` (0: none yet; undefined:
   * unconditionally). Not `ok` when it was not; a record id already in the stream within its
   * duplicate window is left out, not written twice.
   */
  append(
    ref: ShardRef,
    records: readonly OutputRecord[],
    cp: OutputCheckpoint,
    expectAt: number | undefined,
  ): Promise<{ ok: true; checkpointSeq: number } | { ok: false }>;
  /** Record ids of the shard's records from source sequence `fromSeq` on (for reconciliation). */
  recordIds(ref: ShardRef, fromSeq: number): Promise<string[]>;
}

/** A shard's checkpoint as an inspector reads it. */
export interface ShardCheckpoint extends Checkpoint {
  pipeline: string;
  shard: number;
}

/** One committed row as an inspector reads it. */
export interface CommittedRow {
  recordId: string;
  key: string;
  shard: number;
  sourceSeq: number;
  epoch: number;
  worker: string;
  /** When the sink committed it, ms since the epoch (the sink's clock). */
  committedAt: number;
  /**
   * Position in the sink's commit order across the pipeline: increasing with every row written
   * (a row id, an output stream's sequence).
   */
  order: number;
  /** The stored value, when asked for (`RowQuery.values`). */
  value?: RecordValue;
  /** The reference entries an enrichment used (`SinkRow.lineage`), with the value when it has any. */
  lineage?: Readonly<Record<string, number>>;
  /** True for a record committed late by its event time, with the value (absent: on time). */
  late?: boolean;
}

export interface RowQuery {
  shard?: number;
  /** Only rows committed at or after this time, ms since the epoch. */
  sinceMs?: number;
  /** Also read every row's stored value (costly on large tables). */
  values?: boolean;
}

/**
 * The read side of a sink, for tools rather than workers: `verify`, `status`, the dashboard,
 * `chaos` and the bench read checkpoints and committed rows through it, whatever the sink.
 */
export interface SinkInspector {
  /** Every shard's checkpoint the sink holds; empty when the sink holds none yet. */
  checkpoints(): Promise<ShardCheckpoint[]>;
  /** Rows committed for a pipeline; 0 when it has no table yet. */
  rowCount(pipeline: string): Promise<number>;
  /** Rows committed for a pipeline, in commit order, filtered by `q`. */
  rows(pipeline: string, q?: RowQuery): Promise<CommittedRow[]>;
  /**
   * A pipeline's audit rows in commit order, one shard's with `q.shard`; absent when the sink
   * keeps no audit table.
   */
  batches?(pipeline: string, q?: { shard?: number }): Promise<AuditedBatch[]>;
  /** A pipeline's late records (`sluice_late`) by shard and sequence; absent when the sink keeps none. */
  lateRecords?(pipeline: string): Promise<LateRecord[]>;
  /** A merge's rows in key order (byte order); absent when the sink keeps no merges. */
  mergeRows?(merge: string): Promise<MergeRow[]>;
  close(): Promise<void>;
}

export interface DeadLetter {
  ref: ShardRef;
  seq: number;
  code: string;
  message: string;
  /** The stage that rejected the record (`decode` for bad input). */
  stage?: string;
  subject: string;
  data: Uint8Array;
  headers: Record<string, string>;
}

export interface DeadLetterQueue {
  /** Durably stores the entries; resolves once every entry is persisted. Idempotent per (shard, seq). */
  publish(entries: DeadLetter[]): Promise<void>;
}

export interface Versioned<T> {
  value: T | null;
  /** KV revision; 0 when the key does not exist. */
  revision: number;
}

/** A replicated key-value map of JSON values with compare-and-set writes. */
export interface JsonStore<T> {
  get(key: string): Promise<Versioned<T>>;
  /** Calls `onValue` for every current key, then for every change, until stopped. */
  watch(onValue: (key: string, v: Versioned<T>) => void): Promise<{ stop(): void }>;
  /** Writes only if the key is still at `expectedRevision` (0: must not exist); else `ErrorCode.Conflict`. */
  compareAndSet(key: string, value: T, expectedRevision: number): Promise<number>;
  /** Unconditional write. */
  put(key: string, value: T): Promise<number>;
}

/** Shard key -> assignment. */
export type AssignmentStore = JsonStore<AssignmentEntry>;

/** Heartbeat reply of the leader: the epochs the worker holds in its view. */
export interface Grants {
  leader: string;
  term: number;
  grants: Record<string, number>;
}

export interface ReleasedNotice {
  worker: string;
  shard: string;
  epoch: number;
  /**
   * Set when the worker gave the shard up because the sink is fenced at this higher epoch
   * while the assignment still names it: the coordinator must move past it.
   */
  fencedBy?: number;
}

/**
 * An assignment write the coordinator has made, announced once the store acknowledged it: a
 * copy of a committed entry, at the revision it got.
 */
export interface AssignedNotice {
  shard: string;
  entry: AssignmentEntry;
  revision: number;
}

/** The worker's side of the control plane. */
export interface WorkerControlBus {
  /** Sends a heartbeat; resolves with the leader's grants, or null when no leader answered in time. */
  heartbeat(hb: Heartbeat, timeoutMs: number): Promise<Grants | null>;
  released(notice: ReleasedNotice): void;
  /**
   * Hears every worker's releases, until the returned function is called. The next owner of a
   * shard handed off gracefully fences the sink as soon as the previous owner has released,
   * instead of after its grant has come through the assignment store. Optional: without it
   * the next owner fences when granted.
   */
  onReleased?(handler: (n: ReleasedNotice) => void): () => void;
  /**
   * Hears assignment writes as the coordinator makes them, until the returned function is
   * called. The store's watch is the source of truth and delivers the same entries, but a watch
   * served by a replica that learns commits late delivered them 60–180 ms after the write (seen
   * on workers that had just joined), on the hand-off's path. A notice is applied under the
   * watch's own revision rules, so whichever comes first counts and the other is ignored.
   * Optional: without it entries come through the watch alone.
   */
  onAssigned?(handler: (n: AssignedNotice) => void): () => void;
}

/** The coordinator's side of the control plane. */
export interface CoordinatorControlBus {
  /** `reply` answers the heartbeat; a coordinator that is not leader does not call it. */
  onHeartbeat(handler: (hb: Heartbeat, reply: (g: Grants) => void) => void): void;
  onReleased(handler: (n: ReleasedNotice) => void): void;
  /** Announces a write the store has acknowledged (see `WorkerControlBus.onAssigned`). Lossy. */
  assigned?(n: AssignedNotice): void;
  close(): Promise<void>;
}

/** Timers, compatible with xstate's clock, so simulations can run on virtual time. */
export interface Scheduler {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemScheduler: Scheduler = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};
