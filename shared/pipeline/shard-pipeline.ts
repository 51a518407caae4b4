/**
 * The data path of one shard lease at one epoch: pull a batch, run it through the stages,
 * commit it with the checkpoint in one fenced sink transaction, then ack it once (AckPolicy
 * all); see `BatchCommitter`. This class owns the lease's life: preparing a graceful hand-off,
 * acquiring (fence, then open the consumer), the pull loop, and draining. Talks to ports only,
 * so it runs against NATS and a real sink in production and in-memory ports in simulation.
 */

import type { ShardRef } from "../contract/ownership.js";
import type { Checkpoint, FeedFlow, FeedStart, ShardFeed, SourceMessage } from "../contract/ports.js";
import { type BatchSizing, nextBatchLimit, shardFlow } from "../core/batch-size.js";
import type { RunOutcome } from "../core/lease.machine.js";
import { BatchCommitter } from "./batch-committer.js";
import { HistoryGuard, startSeq } from "./history-guard.js";
import type { PipelineHooks, PipelinePorts, PipelineSettings } from "./pipeline-options.js";
import { StageChain } from "./stage-chain.js";
import { decodeStage } from "./stages/decode-stage.js";

/** How long after a first sighting a stream behind its checkpoint is asked again, ms. */
const streamBehindRecheckMs = 2_000;

/** Closes a feed still being opened (a prepared one not used), whenever it opens. */
function closeWhenOpen(feed: Promise<ShardFeed | null>): Promise<void> {
  return feed.then((f) => f?.close()).catch(() => undefined);
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
  private sizing: BatchSizing;
  /** See `prepare`: the checkpoint read before this lease began, and the feed opened there. */
  private startHint: Promise<Checkpoint | null> | undefined;
  private early: Promise<ShardFeed | null> | undefined;
  private isPrepared = false;
  /** See `fenceEarly`. */
  private earlyFence: Promise<Checkpoint> | undefined;
  /** Deliveries below this sequence were committed before the fence: dropped (see `acquire`). */
  private skipBelow = 0;
  /** `hooks.onFenced` was called: once per lease. */
  private fenceReported = false;
  /** This lease's in-flight bounds, set at acquisition (undefined: the source's defaults). */
  private flow: FeedFlow | undefined;
  private readonly history: HistoryGuard;
  private readonly committer: BatchCommitter;

  constructor(
    readonly ref: ShardRef,
    readonly epoch: number,
    readonly worker: string,
    private readonly ports: PipelinePorts,
    private readonly settings: PipelineSettings,
    private readonly hooks: PipelineHooks,
  ) {
    this.history = new HistoryGuard(ref, epoch, settings.reconcileWindowMs ?? 120_000, (from) =>
      ports.sink.recordIds(ref, from),
    );
    this.committer = new BatchCommitter(
      ref,
      epoch,
      worker,
      ports.sink,
      ports.deadLetters,
      new StageChain(decodeStage, hooks.stages),
      this.history,
      {
        ...hooks,
        stopping: () => this.stopping,
        ...(settings.deadLetterMark === undefined ? {} : { deadLetterMark: settings.deadLetterMark }),
      },
    );
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
   * Prepares a graceful hand-off while the previous owner drains: `cp` is this shard's
   * checkpoint read then, and this epoch's consumer is opened there at once, so the next
   * `acquire` only has to fence (see `acquire`). Records arriving meanwhile are pulled into the
   * feed's buffer; nothing is committed or acked before the fence. Used once.
   *
   * Resolves true once the consumer is open (the worker reports the shard prepared), false
   * when it could not be opened; never rejects.
   */
  prepare(cp: Promise<Checkpoint | null>): Promise<boolean> {
    this.startHint = cp.catch(() => null);
    this.early = this.startHint.then((hint) => {
      if (!hint || this.stopping) return null;
      this.sizeFlow();
      return this.ports.source.open(this.ref, this.epoch, { seq: startSeq(hint) }, this.flow);
    });
    // Settled where it is used; never an unhandled rejection when the hand-off is called off.
    return this.early.then(
      (feed) => {
        this.isPrepared = feed !== null;
        return this.isPrepared;
      },
      () => false,
    );
  }

  /** True once `prepare` has opened this epoch's consumer. */
  get prepared(): boolean {
    return this.isPrepared;
  }

  /**
   * The previous owner has released (a graceful hand-off): fence the sink at this epoch now,
   * before the grant comes through the assignment store, so `acquire` finds it done. Fencing
   * early is safe: a fence only stops commits of older epochs, whose last owner has just
   * released, and this one commits nothing before it is granted. If the shard goes to another
   * owner at this epoch instead, its fence at the same epoch succeeds as well.
   */
  fenceEarly(): void {
    if (this.earlyFence || this.stopping) return;
    this.earlyFence = this.ports.sink.fence(this.ref, this.epoch);
    this.earlyFence.catch(() => undefined);
  }

  /**
   * Fence the sink at this epoch, open this epoch's consumer, then remove older epochs'
   * consumers in the background. Reports how long each step on the way took (ms), so a slow
   * failover can be traced to its step.
   *
   * Prepared (a graceful hand-off), the consumer was opened at the checkpoint read while the
   * previous owner drained, before this epoch was granted: checkpoints only advance, so that
   * one is at or before the fenced checkpoint, and the records between the two (the last
   * batches the previous owner committed while draining) are skipped and acked on delivery.
   * Nothing is committed before the fence has returned, so opening early changes no safety
   * argument; it takes consumer creation off the hand-off's path.
   *
   * The clean-up is off the hand-off's path on purpose: deleting a consumer is a JetStream
   * meta-layer operation (tens of ms, seconds while the cluster re-elects), and safety never
   * rests on it. A zombie still pulling from its old consumer reads records this epoch also
   * reads, acks only its own consumer (AckPolicy all is per consumer), and its commit is
   * rejected by the fence set above.
   */
  async acquire(): Promise<{
    checkpoint: number;
    fenceMs: number;
    openMs: number;
    overlapped: boolean;
    fencedEarly: boolean;
    maxAckPending?: number;
  }> {
    const t0 = this.hooks.now();
    // Asked for before this lease began, so it is answered before a fence sent now would be.
    const hint = await this.startHint;
    const early = this.early ?? null;
    this.startHint = undefined;
    this.early = undefined;
    const earlyFence = this.earlyFence;
    this.earlyFence = undefined;
    let cp: Checkpoint;
    try {
      // An early fence that failed is tried once more, now.
      cp = earlyFence
        ? await earlyFence.catch(() => this.ports.sink.fence(this.ref, this.epoch))
        : await this.ports.sink.fence(this.ref, this.epoch);
    } catch (err) {
      if (early) void closeWhenOpen(early);
      throw err;
    }
    const t1 = this.hooks.now();
    if (!this.fenceReported) {
      this.fenceReported = true;
      this.hooks.onFenced?.(cp);
    }
    let overlapped = false;
    if (!this.stopping) {
      // Start at the checkpoint's own record when the sink knows its fingerprint, so the first
      // delivery proves the stream still numbers records as the sink saw them.
      const from = startSeq(cp);
      this.pending = null;
      this.history.expect(cp);
      this.committer.start(cp);
      const opened = early && hint && startSeq(hint) <= from ? await early.catch(() => null) : null;
      if (opened) {
        await this.adopt(opened);
        this.skipBelow = from;
        overlapped = true;
      } else {
        if (early) void closeWhenOpen(early);
        this.sizeFlow();
        await this.closeFeed();
        this.skipBelow = 0;
        await this.adopt(await this.ports.source.open(this.ref, this.epoch, { seq: from }, this.flow));
      }
      this.nextDelivery = 1;
    } else if (early) {
      void closeWhenOpen(early);
    }
    const openMs = this.hooks.now() - (overlapped ? t0 : t1);
    void this.ports.source.removeOlderEpochs(this.ref, this.epoch).catch(() => undefined);
    if (cp.seq > 0 && !this.stopping) void this.checkStreamBounds(cp.seq);
    return {
      checkpoint: cp.seq,
      fenceMs: t1 - t0,
      openMs,
      overlapped,
      fencedEarly: earlyFence !== undefined,
      ...(this.flow ? { maxAckPending: this.flow.maxAckPending } : {}),
    };
  }

  /**
   * Reports a checkpoint outside the records the shard's stream holds. Past the last one ever
   * stored (`StreamBehindReport`): nothing else would tell, since the consumer waits at the
   * checkpoint with nothing pending and the shard looks caught up; asked twice,
   * `streamBehindRecheckMs` apart, because a stream leader elected a moment ago may not have
   * applied every record yet. Before the first one still held (`StreamTrimmedReport`): records
   * were removed before the shard committed them, which the history check that follows would
   * only call a changed history. Only reports: the shard goes on either way.
   */
  private async checkStreamBounds(checkpointSeq: number): Promise<void> {
    const ask = async () => {
      const b = await this.ports.source.bounds?.(this.ref).catch(() => null);
      return b && !this.stopping ? b : null;
    };
    const first = await ask();
    if (!first) return;
    if (first.lastSeq >= checkpointSeq) {
      if (first.firstSeq > checkpointSeq)
        this.hooks.onStreamTrimmed?.({
          ref: this.ref,
          epoch: this.epoch,
          checkpointSeq,
          streamFirstSeq: first.firstSeq,
          removedAfterCheckpoint: first.firstSeq - checkpointSeq - 1,
        });
      return;
    }
    if (!this.hooks.sleep) return;
    await this.hooks.sleep(streamBehindRecheckMs);
    const again = await ask();
    if (again && again.lastSeq < checkpointSeq)
      this.hooks.onStreamBehind?.({
        ref: this.ref,
        epoch: this.epoch,
        checkpointSeq,
        streamLastSeq: again.lastSeq,
      });
  }

  /**
   * Takes a feed just opened. One that opens after the lease ended (`abandon` or `drain` ran
   * while `open` was pending, so their close found no feed) is closed at once: nothing else
   * would close it, and its consumer would keep up to `maxAckPending` records buffered in
   * this process for as long as it runs.
   */
  private async adopt(feed: ShardFeed): Promise<void> {
    if (this.stopping) {
      await feed.close().catch(() => undefined);
      return;
    }
    this.feed = feed;
  }

  private async closeFeed(): Promise<void> {
    const feed = this.feed;
    this.feed = null;
    await feed?.close();
  }

  /**
   * Takes this shard's share of the worker's in-flight budget, counted after the fence, by
   * which time the assignment that brought this shard has usually brought its siblings too.
   */
  private sizeFlow(): void {
    const { maxBufferedRecords, maxAckPending } = this.settings;
    const owned = this.hooks.shardsOwned?.();
    if (maxBufferedRecords === undefined || maxAckPending === undefined || owned === undefined) return;
    const f = shardFlow({ batchMax: this.settings.batchMax, maxAckPending, maxBufferedRecords }, owned);
    this.flow = { maxAckPending: f.maxAckPending, bufferMessages: f.bufferMessages };
    this.sizing = { ...this.sizing, max: f.batchMax };
    this.batchLimit = Math.min(this.batchLimit, f.batchMax);
  }

  /** Runs batches until stopped, until the lease needs a re-check, or until fenced or broken. */
  run(): Promise<RunOutcome> {
    this.loop = this.runLoop();
    return this.loop;
  }

  private async runLoop(): Promise<RunOutcome> {
    let feed = this.feed;
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
        if (this.skipBelow > 0) {
          const from = this.skipBelow;
          const kept = msgs.filter((m) => m.seq >= from);
          if (kept.length === 0) {
            // All committed before the fence. Acked, or a consumer whose whole in-flight bound
            // is such records would wait for acks that never come.
            feed.ack(msgs[msgs.length - 1]!);
            continue;
          }
          msgs = kept;
          this.skipBelow = 0;
        }
        if (this.history.pending) {
          const first = this.history.check(msgs);
          if (first.kind === "mismatch") {
            this.hooks.onHistoryMismatch?.(first.report);
            try {
              await this.reopen(feed, first.start);
            } catch (err) {
              return { type: "failed", reason: `rewind failed: ${(err as Error).message}` };
            }
            feed = this.feed;
            if (!feed) return { type: "failed", reason: "stopped" };
            continue;
          }
          // The checkpoint's own record: committed already, acked and dropped.
          feed.ack(msgs[0]!);
          msgs = first.rest;
          if (msgs.length === 0) continue;
        }
        this.pending = msgs;
        if (this.stopping) break;
      }
      const outcome = await this.commitPending(feed);
      if (outcome) return outcome;
    }
    return { type: "failed", reason: "stopped" };
  }

  /** Replaces the feed with one opened at `start` (a rewind after a history mismatch). */
  private async reopen(feed: ShardFeed, start: FeedStart): Promise<void> {
    this.feed = null;
    await feed.close();
    if (this.stopping) return;
    await this.adopt(await this.ports.source.open(this.ref, this.epoch, start, this.flow));
    this.nextDelivery = 1;
  }

  /** Commits `pending`; returns an outcome only when the run must end. */
  private async commitPending(feed: ShardFeed): Promise<RunOutcome | null> {
    const batch = this.pending;
    if (!batch || batch.length === 0) return null;
    const r = await this.committer.commit(feed, batch);
    if (!r.ok) return r.outcome;
    this.pending = null;
    const last = batch[batch.length - 1]!;
    this.batchLimit = nextBatchLimit(
      this.batchLimit,
      { size: batch.length, commitMs: r.commitMs, lag: last.pending },
      this.sizing,
    );
    return null;
  }

  /**
   * Graceful end: stop pulling, commit and ack the in-flight batch, close the consumer. It is
   * deleted in the background (the next owner also removes it), so the release is not delayed.
   */
  async drain(): Promise<void> {
    this.stopping = true;
    this.feed?.wake?.();
    await this.loop?.catch(() => undefined);
    const feed = this.feed;
    try {
      // A batch held back for a stage's missing input was never decided: nothing to finish.
      if (feed && this.pending && !feed.failure && !this.committer.waitingForInput) {
        const outcome = await this.commitPending(feed);
        // Anything but a clean commit means this owner cannot promise it is done: no release.
        if (outcome) throw new Error(`drain did not commit its last batch: ${outcome.type}`);
      }
    } finally {
      await this.close();
    }
    void this.ports.source.remove(this.ref, this.epoch).catch(() => undefined);
  }

  /** Fenced: drop everything without committing. */
  abandon(): Promise<void> {
    this.stopping = true;
    const early = this.early;
    this.early = undefined;
    // Resolves once a consumer still being opened (a prepared hand-off's) exists and its feed is
    // closed: only then can the caller delete it for good.
    return Promise.all([early ? closeWhenOpen(early) : undefined, this.close()]).then(() => undefined);
  }

  private async close(): Promise<void> {
    const feed = this.feed;
    this.feed = null;
    this.pending = null;
    await feed?.close().catch(() => undefined);
  }
}
