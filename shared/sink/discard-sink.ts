/**
 * A sink that keeps the fence and checkpoint contract but discards the rows: the worker path
 * measured without a database (benchmarks), or a dry run of a pipeline's decoding.
 */
import { type ShardRef, shardKey } from "../core/types.js";
import { fencedError } from "../errors.js";
import type { Checkpoint, CommitResult, Sink, SinkRow } from "../ports.js";

export class DiscardSink implements Sink {
  private readonly checkpoints = new Map<string, Checkpoint>();
  /** Rows accepted (and dropped) since construction. */
  discarded = 0;

  private cp(ref: ShardRef): Checkpoint {
    return this.checkpoints.get(shardKey(ref)) ?? { epoch: 0, seq: 0 };
  }

  async fence(ref: ShardRef, epoch: number): Promise<Checkpoint> {
    const cp = this.cp(ref);
    if (cp.epoch > epoch) throw fencedError(ref.shard, epoch, cp.epoch);
    const after = { epoch, seq: cp.seq };
    this.checkpoints.set(shardKey(ref), after);
    return after;
  }

  async commit(
    ref: ShardRef,
    epoch: number,
    _worker: string,
    rows: SinkRow[],
    lastSeq: number,
  ): Promise<CommitResult> {
    const cp = this.cp(ref);
    if (cp.epoch > epoch) throw fencedError(ref.shard, epoch, cp.epoch);
    const fresh = rows.filter((r) => r.sourceSeq > cp.seq);
    const after = { epoch, seq: Math.max(cp.seq, lastSeq) };
    this.checkpoints.set(shardKey(ref), after);
    this.discarded += fresh.length;
    return { committed: fresh.length, skipped: rows.length - fresh.length, checkpoint: after };
  }

  async checkpoint(ref: ShardRef): Promise<Checkpoint> {
    return this.cp(ref);
  }

  async close(): Promise<void> {}
}
