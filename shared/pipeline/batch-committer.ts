/**
 * One batch's way into the sink: run the stages, store the dead letters, check the lease,
 * commit rows and checkpoint in one fenced sink transaction, then ack the batch once
 * (AckPolicy all). The order is the guarantee: dead letters are stored before the checkpoint
 * passes them, and the ack comes after the commit, so a crash anywhere only causes a
 * redelivery that the sink's rules skip.
 */
import { messageFingerprint } from "../contract/codec.js";
import { ErrorCode, isSluiceError } from "../contract/errors.js";
import type { ShardRef } from "../contract/ownership.js";
import type { BatchReport, BatchStartReport } from "../contract/pipeline-reports.js";
import type {
  DeadLetter,
  DeadLetterQueue,
  ShardFeed,
  Sink,
  SinkRow,
  SourceMessage,
} from "../contract/ports.js";
import type { RunOutcome } from "../core/lease.machine.js";
import { BatchTrace } from "./batch-trace.js";
import type { HistoryGuard } from "./history-guard.js";
import type { StageChain } from "./stage-chain.js";

export interface CommitterHooks {
  /** Is the lease confirmed recently enough to commit? Checked before every commit. */
  leaseFresh(): boolean;
  now(): number;
  onBatch?(r: BatchReport): void;
  onBatchStart?(r: BatchStartReport): void;
  /** The pipeline's shard count, for the stages' key check (undefined: keys not checked). */
  shards?: number;
}

/** A committed batch: how long the sink transaction took, for the batch sizing. */
export type CommitDone = { ok: true; commitMs: number };
/** The run must end. */
export type CommitEnd = { ok: false; outcome: RunOutcome };

export class BatchCommitter {
  constructor(
    private readonly ref: ShardRef,
    private readonly epoch: number,
    private readonly worker: string,
    private readonly sink: Sink,
    private readonly deadLetters: DeadLetterQueue,
    private readonly chain: StageChain,
    private readonly guard: HistoryGuard,
    private readonly hooks: CommitterHooks,
  ) {}

  async commit(feed: ShardFeed, batch: SourceMessage[]): Promise<CommitDone | CommitEnd> {
    let outcome: RunOutcome | null = null;
    const last = batch[batch.length - 1]!;
    const pending = last.pending === undefined ? {} : { pending: last.pending };
    let staged: Awaited<ReturnType<StageChain["run"]>>;
    let toWrite: SinkRow[];
    try {
      staged = await this.chain.run(batch, { ref: this.ref, shards: this.hooks.shards });
      toWrite = await this.guard.filter(batch, staged.rows);
    } catch (err) {
      return { ok: false, outcome: { type: "failed", reason: `stages failed: ${(err as Error).message}` } };
    }
    const dead: DeadLetter[] = staged.rejected.map((r) => ({
      ref: this.ref,
      seq: r.message.seq,
      code: r.rejection.code,
      message: r.rejection.message,
      stage: r.stage,
      subject: r.message.subject,
      data: r.message.data,
      headers: r.message.headers,
    }));
    this.hooks.onBatchStart?.({ ref: this.ref, epoch: this.epoch, records: batch.length, ...pending });
    // The batch's spans (no-ops unless a tracer provider is registered).
    const bt = new BatchTrace(this.ref, this.epoch, this.worker, batch);
    try {
      // Dead letters are stored before the checkpoint passes them, so none can vanish.
      if (dead.length > 0) await bt.deadLetter(dead.length, () => this.deadLetters.publish(dead));
      // The last moment before the commit leaves this process: a pause may have passed while
      // pulling or dead-lettering, so the lease is checked here. A transient failure ends the
      // run; the lease machine backs off and re-acquires from the sink's checkpoint.
      if (!this.hooks.leaseFresh()) {
        outcome = { type: "stale" };
        return { ok: false, outcome };
      }
      const t0 = this.hooks.now();
      const fingerprint = messageFingerprint(last);
      const reconciling = this.guard.reconciling;
      const res = await bt.commit(() =>
        this.sink.commit(
          this.ref,
          this.epoch,
          this.worker,
          toWrite,
          last.seq,
          reconciling ? { fingerprint, belowCheckpoint: true } : { fingerprint },
        ),
      );
      this.guard.committed(last, toWrite);
      bt.settle(this.ref.pipeline, () => feed.ack(last));
      const commitMs = this.hooks.now() - t0;
      this.hooks.onBatch?.({
        ref: this.ref,
        epoch: this.epoch,
        committed: res.committed,
        skipped: res.skipped + staged.rows.length - toWrite.length,
        deadLettered: dead.length,
        routed: staged.routed,
        checkpoint: res.checkpoint.seq,
        commitMs,
        ...pending,
      });
      return { ok: true, commitMs };
    } catch (err) {
      if (isSluiceError(err, ErrorCode.Fenced)) {
        outcome = {
          type: "fenced",
          reason: err.message,
          ...(err.fencedBy === undefined ? {} : { fencedBy: err.fencedBy }),
        };
      } else {
        outcome = { type: "failed", reason: `commit failed: ${(err as Error).message}` };
      }
      return { ok: false, outcome };
    } finally {
      bt.end(outcome);
    }
  }
}
