/**
 * A sink that keeps the fence and checkpoint contract but discards the rows: the worker path
 * measured without a database (benchmarks), or a dry run of a pipeline's decoding. The worker
 * still decodes and checks every record; the JSON text a storing sink renders is not made.
 */
import { type ShardRef, shardKey } from "../core/types.js";
import { fencedError } from "../errors.js";
import type { Checkpoint, CommitOptions, CommitResult, Sink, SinkRow } from "../ports.js";
import { advanceCheckpoint } from "./checkpoint.js";

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
    const after = { ...cp, epoch };
    this.checkpoints.set(shardKey(ref), after);
    return after;
  }

  async commit(
    ref: ShardRef,
    epoch: number,
    _worker: string,
    rows: SinkRow[],
    lastSeq: number,
    opts: CommitOptions = {},
  ): Promise<CommitResult> {
    const cp = this.cp(ref);
    if (cp.epoch > epoch) throw fencedError(ref.shard, epoch, cp.epoch);
    const fresh = opts.belowCheckpoint ? rows : rows.filter((r) => r.sourceSeq > cp.seq);
    const after = advanceCheckpoint(cp, epoch, lastSeq, opts);
    this.checkpoints.set(shardKey(ref), after);
    this.discarded += fresh.length;
    return { committed: fresh.length, skipped: rows.length - fresh.length, checkpoint: after };
  }

  async checkpoint(ref: ShardRef): Promise<Checkpoint> {
    return this.cp(ref);
  }

  /** Keeps no rows, so it knows no record ids: a reconciliation through it writes them again. */
  async recordIds(_ref: ShardRef, _fromSeq: number): Promise<string[]> {
    return [];
  }

  async close(): Promise<void> {}
}
