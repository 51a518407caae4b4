/**
 * An in-memory sink under the same rules as every sink (`core/sink-rules.ts`): rows and
 * checkpoint change together, lower epochs are refused, redelivered sequences are skipped.
 * Used by the simulator, which observes every fence and commit through `observer`, by unit
 * tests, and by the worker's in-process warm-up. Every operation is synchronous, so each is
 * atomic by construction.
 */
import { ErrorCode, isSluiceError, SluiceError } from "../../contract/errors.js";
import { type ShardRef, shardKey } from "../../contract/ownership.js";
import type {
  AuditedBatch,
  Checkpoint,
  CommitOptions,
  CommitResult,
  CommittedRow,
  LateRecord,
  MergeRow,
  RowQuery,
  ShardCheckpoint,
  Sink,
  SinkInspector,
  SinkRow,
} from "../../contract/ports.js";
import { compareCodePoints, compareMerge } from "../../core/merge-policy.js";
import {
  applyCommit,
  applyFence,
  MemoryDedupeMarks,
  type SinkRules,
  type SinkTransaction,
} from "../../core/sink-rules.js";

import type { MergeBranches, ReconcileReport } from "./sink-tables.js";
export interface SinkCommitEvent {
  ref: ShardRef;
  epoch: number;
  worker: string;
  /** The shard's fenced epoch when the commit was applied. */
  fencedEpoch: number;
  before: Checkpoint;
  after: Checkpoint;
  written: SinkRow[];
  /** Rows the commit did not write because their business key was committed within the window. */
  deduplicated?: SinkRow[];
}

export interface SinkObserver {
  onFence?(ref: ShardRef, epoch: number, after: Checkpoint): void;
  onCommit?(e: SinkCommitEvent): void;
  onReject?(ref: ShardRef, epoch: number, worker: string, fencedEpoch: number): void;
}

export interface MemorySinkOptions {
  /** The simulator's switches of the sink rules (see `SinkRules`); production keeps them all on. */
  rules?: SinkRules;
  observer?: SinkObserver;
  /** Wall clock for `committedAt`, ms. */
  now?: () => number;
  /**
   * The simulator's unsafe merge: the last record to arrive replaces the key's row, whatever
   * the policy ranks (an upsert without a version check). Production never sets it.
   */
  mergeByArrival?: boolean;
}

export interface StoredRow extends SinkRow {
  shard: number;
  pipeline: string;
  epoch: number;
  worker: string;
  committedAt: number;
}

export class MemorySink implements Sink, SinkInspector {
  /** Every row written, in commit order. */
  readonly stored: StoredRow[] = [];
  /** Every commit's audit row (`sluice_batches`), in commit order. */
  readonly audit: AuditedBatch[] = [];
  private readonly checkpoints_ = new Map<string, { ref: ShardRef; cp: Checkpoint }>();
  private closed = false;
  /** Rows written by the commit in progress (for the observer). */
  private written: SinkRow[] = [];
  private readonly storage: SinkTransaction<SinkRow> = {
    readCheckpoint: (ref) => this.cp(ref),
    writeRows: (ref, epoch, worker, rows) => {
      const committedAt = (this.opts.now ?? Date.now)();
      for (const r of rows) {
        this.written.push(r);
        this.stored.push({ ...r, shard: ref.shard, pipeline: ref.pipeline, epoch, worker, committedAt });
        if (r.merge !== undefined && r.output === undefined) this.applyMerge(ref, r, committedAt);
      }
    },
    writeCheckpoint: (ref, cp) => void this.checkpoints_.set(shardKey(ref), { ref, cp }),
    writeBatch: (ref, row) => {
      this.audit.push({
        ...row,
        pipeline: ref.pipeline,
        shard: ref.shard,
        committedAt: (this.opts.now ?? Date.now)(),
      });
    },
    dedupe: (ref, rows, windowMs) => {
      const keep = this.marks.apply(ref.pipeline, rows, windowMs);
      const kept = new Set(keep);
      this.deduplicated.push(...rows.filter((r) => !kept.has(r)));
      return keep;
    },
  };
  private readonly marks = new MemoryDedupeMarks();
  /** Rows the commit in progress dropped as duplicates (for the observer). */
  private deduplicated: SinkRow[] = [];
  /** Shard -> rows `markOutside` dropped, reported with the shard's next commit. */
  private readonly droppedOutside = new Map<string, SinkRow[]>();

  /**
   * The simulator's unsafe dedupe, as a cache beside the sink decides it: `rows` are checked and
   * marked now, when the worker sends them, whether or not their commit ever lands. Returns the
   * rows to send (without their business key, so the commit does not decide again).
   */
  markOutside(ref: ShardRef, rows: readonly SinkRow[], windowMs: number): SinkRow[] {
    const dropped = this.deduplicated;
    this.deduplicated = [];
    const keep = this.storage.dedupe!(ref, rows, windowMs);
    const k = shardKey(ref);
    this.droppedOutside.set(k, [...(this.droppedOutside.get(k) ?? []), ...this.deduplicated]);
    this.deduplicated = dropped;
    return keep.map(({ dedupe: _, ...r }) => r);
  }

  constructor(private readonly opts: MemorySinkOptions = {}) {}

  /** Merge -> key -> its row (`SinkRow.merge`). */
  private readonly mergeTables = new Map<string, Map<string, MergeRow>>();

  private applyMerge(ref: ShardRef, r: SinkRow, at: number): void {
    const m = r.merge!;
    let table = this.mergeTables.get(m.into);
    if (!table) {
      table = new Map();
      this.mergeTables.set(m.into, table);
    }
    const cur = table.get(r.key);
    const next = { recordId: r.recordId, eventTime: m.eventTime, priority: m.priority };
    if (cur && !this.opts.mergeByArrival && compareMerge(m.policy, next, cur) <= 0) return;
    table.set(r.key, {
      key: r.key,
      ...next,
      pipeline: ref.pipeline,
      shard: ref.shard,
      sourceSeq: r.sourceSeq,
      value: r.value,
      updatedAt: at,
    });
  }

  private cp(ref: ShardRef): Checkpoint {
    return this.checkpoints_.get(shardKey(ref))?.cp ?? { epoch: 0, seq: 0 };
  }

  private assertOpen(): void {
    if (this.closed) throw new SluiceError(ErrorCode.Unavailable, "sink is closed");
  }

  async fence(ref: ShardRef, epoch: number): Promise<Checkpoint> {
    return this.fenceSync(ref, epoch);
  }

  fenceSync(ref: ShardRef, epoch: number): Checkpoint {
    this.assertOpen();
    const cp = applyFence(this.storage, ref, epoch, this.opts.rules);
    this.opts.observer?.onFence?.(ref, epoch, this.cp(ref));
    return cp;
  }

  async commit(
    ref: ShardRef,
    epoch: number,
    worker: string,
    rows: SinkRow[],
    lastSeq: number,
    opts: CommitOptions = {},
  ): Promise<CommitResult> {
    return this.commitSync(ref, epoch, worker, rows, lastSeq, opts);
  }

  commitSync(
    ref: ShardRef,
    epoch: number,
    worker: string,
    rows: SinkRow[],
    lastSeq: number,
    opts: CommitOptions = {},
    /** The simulator's switches for this commit only (see `SimSinkClient`'s group commit). */
    rules: SinkRules | undefined = this.opts.rules,
  ): CommitResult {
    this.assertOpen();
    const before = this.cp(ref);
    this.written = [];
    this.deduplicated = [];
    let res: CommitResult;
    try {
      res = applyCommit(this.storage, ref, epoch, worker, rows, lastSeq, opts, rules);
    } catch (err) {
      if (isSluiceError(err, ErrorCode.Fenced) || isSluiceError(err, ErrorCode.Conflict))
        this.opts.observer?.onReject?.(ref, epoch, worker, before.epoch);
      throw err;
    }
    const written = this.written;
    this.written = [];
    const outside = this.droppedOutside.get(shardKey(ref)) ?? [];
    this.droppedOutside.delete(shardKey(ref));
    this.opts.observer?.onCommit?.({
      ref,
      epoch,
      worker,
      fencedEpoch: before.epoch,
      before,
      after: this.cp(ref),
      written,
      deduplicated: [...this.deduplicated, ...outside],
    });
    return res;
  }

  async recordIds(ref: ShardRef, fromSeq: number): Promise<string[]> {
    return this.recordIdsSync(ref, fromSeq);
  }

  recordIdsSync(ref: ShardRef, fromSeq: number): string[] {
    this.assertOpen();
    return this.stored
      .filter((r) => r.pipeline === ref.pipeline && r.shard === ref.shard && r.sourceSeq >= fromSeq)
      .map((r) => r.recordId);
  }

  async checkpoint(ref: ShardRef): Promise<Checkpoint> {
    return this.checkpointSync(ref);
  }

  checkpointSync(ref: ShardRef): Checkpoint {
    this.assertOpen();
    return this.cp(ref);
  }

  async checkpoints(): Promise<ShardCheckpoint[]> {
    return [...this.checkpoints_.values()].map(({ ref, cp }) => ({
      ...cp,
      pipeline: ref.pipeline,
      shard: ref.shard,
    }));
  }

  async rowCount(pipeline: string): Promise<number> {
    return this.stored.filter((r) => r.pipeline === pipeline && r.output === undefined).length;
  }

  /** Late rows `reconcileLate` applied to their merge. */
  private readonly reconciled = new Set<StoredRow>();

  /** See `SqliteSink.reconcileLate`. */
  async reconcileLate(m: MergeBranches): Promise<ReconcileReport> {
    this.assertOpen();
    const at = (this.opts.now ?? Date.now)();
    let reconciled = 0;
    for (const b of m.branches)
      for (const r of this.stored) {
        if (r.pipeline !== b.pipeline || r.late === undefined || r.output !== undefined) continue;
        if (this.reconciled.has(r)) continue;
        const merge = { into: m.merge, policy: m.policy, priority: b.priority, eventTime: r.late.eventTime };
        this.applyMerge({ pipeline: r.pipeline, shard: r.shard }, { ...r, merge }, at);
        this.reconciled.add(r);
        reconciled++;
      }
    return { merge: m.merge, reconciled };
  }

  async mergeRows(merge: string): Promise<MergeRow[]> {
    return [...(this.mergeTables.get(merge)?.values() ?? [])].sort((a, b) => compareCodePoints(a.key, b.key));
  }

  async lateRecords(pipeline: string): Promise<LateRecord[]> {
    return this.stored
      .filter((r) => r.pipeline === pipeline && r.late !== undefined && r.output === undefined)
      .map((r) => ({
        pipeline,
        shard: r.shard,
        sourceSeq: r.sourceSeq,
        recordId: r.recordId,
        ...r.late!,
        reconciled: this.reconciled.has(r),
        committedAt: r.committedAt,
      }))
      .sort((a, b) => a.shard - b.shard || a.sourceSeq - b.sourceSeq);
  }

  async batches(pipeline: string, q: { shard?: number } = {}): Promise<AuditedBatch[]> {
    return this.audit.filter(
      (b) => b.pipeline === pipeline && (q.shard === undefined || b.shard === q.shard),
    );
  }

  async rows(pipeline: string, q: RowQuery = {}): Promise<CommittedRow[]> {
    return inspectRows(this.stored, pipeline, q);
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

/** Stored rows of a pipeline's own table as an inspector reads them. */
function inspectRows(rows: readonly StoredRow[], pipeline: string, q: RowQuery): CommittedRow[] {
  const out: CommittedRow[] = [];
  rows.forEach((r, order) => {
    if (r.pipeline !== pipeline || r.output !== undefined) return;
    if (q.shard !== undefined && r.shard !== q.shard) return;
    if (q.sinceMs !== undefined && r.committedAt < q.sinceMs) return;
    out.push({
      recordId: r.recordId,
      key: r.key,
      shard: r.shard,
      sourceSeq: r.sourceSeq,
      epoch: r.epoch,
      worker: r.worker,
      committedAt: r.committedAt,
      order,
      ...(q.values ? { value: r.value } : {}),
      ...(q.values && r.lineage !== undefined ? { lineage: r.lineage } : {}),
      ...(q.values && r.late !== undefined ? { late: true } : {}),
    });
  });
  return out;
}
