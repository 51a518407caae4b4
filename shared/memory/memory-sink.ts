/**
 * An in-memory sink with the same fenced, atomic contract as `SqliteSink`: rows and
 * checkpoint change together, lower epochs are rejected, redelivered sequences are skipped.
 * Used by the simulator, which observes every fence and commit through `observer`.
 */
import { type ShardRef, shardKey } from "../core/types.js";
import { ErrorCode, fencedError, SluiceError } from "../errors.js";
import type { Checkpoint, CommitOptions, CommitResult, Sink, SinkRow } from "../ports.js";
import { advanceCheckpoint } from "../sink/checkpoint.js";

export interface SinkCommitEvent {
  ref: ShardRef;
  epoch: number;
  worker: string;
  /** The shard's fenced epoch when the commit was applied. */
  fencedEpoch: number;
  before: Checkpoint;
  after: Checkpoint;
  written: SinkRow[];
}

export interface SinkObserver {
  onFence?(ref: ShardRef, epoch: number, after: Checkpoint): void;
  onCommit?(e: SinkCommitEvent): void;
  onReject?(ref: ShardRef, epoch: number, worker: string, fencedEpoch: number): void;
}

export interface MemorySinkOptions {
  /**
   * The epoch fence. Always on in production; the simulator's checker tests switch it off to
   * prove that the invariants catch the zombie commits it stops.
   */
  fence?: boolean;
  observer?: SinkObserver;
}

export interface StoredRow extends SinkRow {
  shard: number;
  pipeline: string;
  epoch: number;
  worker: string;
}

export class MemorySink implements Sink {
  readonly rows: StoredRow[] = [];
  private readonly checkpoints = new Map<string, Checkpoint>();
  private readonly fenceOn: boolean;
  private closed = false;

  constructor(private readonly opts: MemorySinkOptions = {}) {
    this.fenceOn = opts.fence ?? true;
  }

  private cp(ref: ShardRef): Checkpoint {
    return this.checkpoints.get(shardKey(ref)) ?? { epoch: 0, seq: 0 };
  }

  private assertOpen(): void {
    if (this.closed) throw new SluiceError(ErrorCode.Unavailable, "sink is closed");
  }

  async fence(ref: ShardRef, epoch: number): Promise<Checkpoint> {
    return this.fenceSync(ref, epoch);
  }

  fenceSync(ref: ShardRef, epoch: number): Checkpoint {
    this.assertOpen();
    const before = this.cp(ref);
    if (this.fenceOn && before.epoch > epoch) throw fencedError(ref.shard, epoch, before.epoch);
    const after = { ...before, epoch: Math.max(before.epoch, epoch) };
    this.checkpoints.set(shardKey(ref), after);
    this.opts.observer?.onFence?.(ref, epoch, after);
    return { ...after, epoch };
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
  ): CommitResult {
    this.assertOpen();
    const before = this.cp(ref);
    if (this.fenceOn && before.epoch !== epoch) {
      this.opts.observer?.onReject?.(ref, epoch, worker, before.epoch);
      if (before.epoch > epoch) throw fencedError(ref.shard, epoch, before.epoch);
      throw new SluiceError(
        ErrorCode.Conflict,
        `shard ${ref.shard}: commit at epoch ${epoch} before its fence`,
      );
    }
    const written: SinkRow[] = [];
    const skipAtOrBelow = opts.belowCheckpoint ? 0 : before.seq;
    for (const r of rows) {
      if (r.sourceSeq <= skipAtOrBelow) continue;
      written.push(r);
      this.rows.push({ ...r, shard: ref.shard, pipeline: ref.pipeline, epoch, worker });
    }
    const after = advanceCheckpoint(before, before.epoch, lastSeq, opts);
    this.checkpoints.set(shardKey(ref), after);
    this.opts.observer?.onCommit?.({ ref, epoch, worker, fencedEpoch: before.epoch, before, after, written });
    return {
      committed: written.length,
      skipped: rows.length - written.length,
      checkpoint: { ...after, epoch },
    };
  }

  async recordIds(ref: ShardRef, fromSeq: number): Promise<string[]> {
    return this.recordIdsSync(ref, fromSeq);
  }

  recordIdsSync(ref: ShardRef, fromSeq: number): string[] {
    this.assertOpen();
    return this.rows
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

  async close(): Promise<void> {
    this.closed = true;
  }
}
