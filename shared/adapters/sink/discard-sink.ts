/**
 * A sink that keeps the fence and checkpoint under the sink rules (`core/sink-rules.ts`) but
 * discards the rows: the worker path measured without a database (benchmarks), or a dry run of
 * a pipeline's stages. The worker still decodes and runs every stage; the JSON text a storing
 * sink renders is never made.
 */
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import { type ShardRef, shardKey } from "../../contract/ownership.js";
import type { Checkpoint, CommitOptions, CommitResult, Sink, SinkRow } from "../../contract/ports.js";
import { applyCommit, applyFence, MemoryDedupeMarks, type SinkTransaction } from "../../core/sink-rules.js";

export class DiscardSink implements Sink {
  private readonly checkpoints = new Map<string, Checkpoint>();
  /** Rows accepted (and dropped) since construction. */
  discarded = 0;
  private readonly storage: SinkTransaction<SinkRow> = {
    readCheckpoint: (ref) => this.checkpoints.get(shardKey(ref)) ?? { epoch: 0, seq: 0 },
    writeRows: (_ref, _epoch, _worker, rows) => {
      this.discarded += rows.length;
    },
    writeCheckpoint: (ref, cp) => void this.checkpoints.set(shardKey(ref), cp),
    // The marks are kept, like the checkpoints, so a deduplicating pipeline pays its real cost.
    dedupe: (ref, rows, windowMs) => this.marks.apply(ref.pipeline, rows, windowMs),
  };
  private readonly marks = new MemoryDedupeMarks();

  private closed = false;

  private assertOpen(): void {
    if (this.closed) throw new SluiceError(ErrorCode.Unavailable, "sink is closed");
  }

  async fence(ref: ShardRef, epoch: number): Promise<Checkpoint> {
    this.assertOpen();
    return applyFence(this.storage, ref, epoch);
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
    return applyCommit(this.storage, ref, epoch, worker, rows, lastSeq, opts);
  }

  async checkpoint(ref: ShardRef): Promise<Checkpoint> {
    return this.storage.readCheckpoint(ref);
  }

  /** Keeps no rows, so it knows no record ids: a reconciliation through it writes them again. */
  async recordIds(_ref: ShardRef, _fromSeq: number): Promise<string[]> {
    return [];
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
