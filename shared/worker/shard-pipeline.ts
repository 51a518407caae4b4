/**
 * The data path of one shard lease at one epoch: pull a batch, decode, dead-letter bad
 * records, commit the rest with the checkpoint in one fenced sink transaction, then ack the
 * batch once (AckPolicy all). Talks to ports only, so it runs against NATS and SQLite in
 * production and against in-memory ports in simulation.
 */

import { decodeRecord } from "../codec.js";
import { type BatchSizing, nextBatchLimit } from "../core/batch-size.js";
import type { RunOutcome } from "../core/lease.machine.js";
import type { ShardRef } from "../core/types.js";
import { ErrorCode, isSluiceError } from "../errors.js";
import type {
  DeadLetter,
  DeadLetterQueue,
  ShardFeed,
  ShardSource,
  Sink,
  SinkRow,
  SourceMessage,
} from "../ports.js";
import { BatchTrace } from "./batch-trace.js";

export interface PipelinePorts {
  sink: Sink;
  source: ShardSource;
  deadLetters: DeadLetterQueue;
}

export interface PipelineSettings {
  /** Largest batch per sink transaction, records. */
  batchMax: number;
  /** Smallest batch limit the adaptive sizing shrinks to, records (default 16). */
  batchMin?: number;
  /** A commit slower than this halves the batch limit, ms (default 100). */
  targetCommitMs?: number;
  /** How long a shard that is behind waits to fill a batch up to its limit, ms (0: never). */
  lingerMs?: number;
  /** Longest wait for the first message of a batch, ms; bounds how fast a drain starts. */
  pullWaitMs: number;
}

export interface BatchReport {
  ref: ShardRef;
  epoch: number;
  committed: number;
  skipped: number;
  deadLettered: number;
  checkpoint: number;
  /** Time spent in the sink transaction, ms. */
  commitMs: number;
  /** Messages still undelivered to the consumer after the batch's last one, when the source says. */
  pending?: number;
}

/** A batch about to be committed (reported once per pulled batch, before its commit). */
export interface BatchStartReport {
  ref: ShardRef;
  epoch: number;
  records: number;
  /** Messages still undelivered to the consumer after the batch's last one, when the source says. */
  pending?: number;
}

export interface PipelineHooks {
  /** Is the lease confirmed recently enough to commit? Checked before every commit. */
  leaseFresh(): boolean;
  onBatch?(r: BatchReport): void;
  onBatchStart?(r: BatchStartReport): void;
  now(): number;
}

export class ShardPipeline {
  private feed: ShardFeed | null = null;
  private pending: SourceMessage[] | null = null;
  private stopping = false;
  private loop: Promise<RunOutcome> | null = null;
  /** Delivery sequence the next message must have; anything else means lost deliveries. */
  private nextDelivery = 1;
  /** Records the next batch may take; adapted after every commit (`nextBatchLimit`). */
  private batchLimit: number;
  private readonly sizing: BatchSizing;

  constructor(
    readonly ref: ShardRef,
    readonly epoch: number,
    readonly worker: string,
    private readonly ports: PipelinePorts,
    private readonly settings: PipelineSettings,
    private readonly hooks: PipelineHooks,
  ) {
    this.sizing = {
      min: settings.batchMin ?? 16,
      max: settings.batchMax,
      targetCommitMs: settings.targetCommitMs ?? 100,
    };
    // Start large: a shard that is behind commits full batches at once; one that keeps up
    // takes what has arrived, so a high limit costs it nothing.
    this.batchLimit = settings.batchMax;
  }

  /**
   * Fence the sink at this epoch, remove older epochs' consumers, open this epoch's consumer.
   * Reports how long each step took (ms), so a slow failover can be traced to its step.
   */
  async acquire(): Promise<{ checkpoint: number; fenceMs: number; cleanupMs: number; openMs: number }> {
    const t0 = this.hooks.now();
    const cp = await this.ports.sink.fence(this.ref, this.epoch);
    const t1 = this.hooks.now();
    await this.ports.source.removeOlderEpochs(this.ref, this.epoch);
    const t2 = this.hooks.now();
    if (!this.stopping) {
      await this.feed?.close();
      this.pending = null;
      this.feed = await this.ports.source.open(this.ref, this.epoch, cp.seq + 1);
      this.nextDelivery = 1;
    }
    return { checkpoint: cp.seq, fenceMs: t1 - t0, cleanupMs: t2 - t1, openMs: this.hooks.now() - t2 };
  }

  /** Runs batches until stopped, until the lease needs a re-check, or until fenced or broken. */
  run(): Promise<RunOutcome> {
    this.loop = this.runLoop();
    return this.loop;
  }

  private async runLoop(): Promise<RunOutcome> {
    const feed = this.feed;
    if (!feed) return { type: "failed", reason: "no feed: acquire first" };
    while (!this.stopping) {
      if (!this.pending) {
        let msgs: SourceMessage[];
        try {
          msgs = await feed.next(this.batchLimit, this.settings.pullWaitMs);
          // Behind (the source says more is waiting): gather up to the limit for a moment, so
          // one commit and one ack cover many deliveries instead of one socket read's worth.
          const linger = this.settings.lingerMs ?? 0;
          if (linger > 0 && msgs.length > 0 && msgs.length < this.batchLimit) {
            const until = this.hooks.now() + linger;
            while (msgs.length < this.batchLimit && (msgs[msgs.length - 1]!.pending ?? 0) > 0) {
              const left = until - this.hooks.now();
              if (left <= 0 || this.stopping) break;
              const more = await feed.next(this.batchLimit - msgs.length, left);
              if (more.length === 0) break;
              msgs = msgs.concat(more);
            }
          }
        } catch (err) {
          return { type: "failed", reason: `pull failed: ${(err as Error).message}` };
        }
        if (msgs.length === 0) continue;
        for (const m of msgs) {
          if (m.deliverySeq !== this.nextDelivery) {
            // Deliveries were lost in flight (a reconnect, a dropped reply). Committing this
            // batch would move the checkpoint past records never seen: start over from it.
            return {
              type: "failed",
              reason: `delivery gap: expected ${this.nextDelivery}, got ${m.deliverySeq}`,
            };
          }
          this.nextDelivery++;
        }
        this.pending = msgs;
        if (this.stopping) break;
      }
      const outcome = await this.commitPending(feed);
      if (outcome) return outcome;
    }
    return { type: "failed", reason: "stopped" };
  }

  /** Commits `pending`; returns an outcome only when the run must end. */
  private async commitPending(feed: ShardFeed): Promise<RunOutcome | null> {
    const batch = this.pending;
    if (!batch || batch.length === 0) return null;
    const rows: SinkRow[] = [];
    const dead: DeadLetter[] = [];
    for (const m of batch) {
      const r = decodeRecord(m);
      if (r.ok) rows.push(r.row);
      else
        dead.push({
          ref: this.ref,
          seq: m.seq,
          code: r.code,
          message: r.message,
          subject: m.subject,
          data: m.data,
          headers: m.headers,
        });
    }
    const last = batch[batch.length - 1]!;
    const pending = last.pending === undefined ? {} : { pending: last.pending };
    this.hooks.onBatchStart?.({ ref: this.ref, epoch: this.epoch, records: batch.length, ...pending });
    // The batch's spans (no-ops unless a tracer provider is registered).
    const bt = new BatchTrace(this.ref, this.epoch, this.worker, batch);
    let outcome: RunOutcome | null = null;
    try {
      // Dead letters are stored before the checkpoint passes them, so none can vanish.
      if (dead.length > 0) await bt.deadLetter(dead.length, () => this.ports.deadLetters.publish(dead));
      // The last moment before the commit leaves this process: a pause may have passed while
      // pulling or dead-lettering, so the lease is checked here. A transient failure ends the
      // run; the lease machine backs off and re-acquires from the sink's checkpoint.
      if (!this.hooks.leaseFresh()) {
        outcome = { type: "stale" };
        return outcome;
      }
      const t0 = this.hooks.now();
      const res = await bt.commit(() =>
        this.ports.sink.commit(this.ref, this.epoch, this.worker, rows, last.seq),
      );
      bt.settle(this.ref.pipeline, () => feed.ack(last));
      this.pending = null;
      this.batchLimit = nextBatchLimit(
        this.batchLimit,
        { size: batch.length, commitMs: this.hooks.now() - t0, lag: last.pending },
        this.sizing,
      );
      this.hooks.onBatch?.({
        ref: this.ref,
        epoch: this.epoch,
        committed: res.committed,
        skipped: res.skipped,
        deadLettered: dead.length,
        checkpoint: res.checkpoint.seq,
        commitMs: this.hooks.now() - t0,
        ...pending,
      });
      return null;
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
      return outcome;
    } finally {
      bt.end(outcome);
    }
  }

  /** Graceful end: stop pulling, commit and ack the in-flight batch, close and delete the consumer. */
  async drain(): Promise<void> {
    this.stopping = true;
    await this.loop?.catch(() => undefined);
    const feed = this.feed;
    if (feed && this.pending && !feed.failure) {
      const outcome = await this.commitPending(feed);
      // Anything but a clean commit means this owner cannot promise it is done: no release.
      if (outcome) throw new Error(`drain did not commit its last batch: ${outcome.type}`);
    }
    await this.close();
    await this.ports.source.remove(this.ref, this.epoch).catch(() => undefined);
  }

  /** Fenced: drop everything without committing. */
  abandon(): void {
    this.stopping = true;
    void this.close();
  }

  private async close(): Promise<void> {
    const feed = this.feed;
    this.feed = null;
    this.pending = null;
    await feed?.close().catch(() => undefined);
  }
}
