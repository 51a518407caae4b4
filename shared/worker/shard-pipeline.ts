/**
 * The data path of one shard lease at one epoch: pull a batch, decode, dead-letter bad
 * records, commit the rest with the checkpoint in one fenced sink transaction, then ack the
 * batch once (AckPolicy all). Talks to ports only, so it runs against NATS and SQLite in
 * production and against in-memory ports in simulation.
 */

import { decodeRecord, messageFingerprint, type ReadShard } from "../codec.js";
import { type BatchSizing, nextBatchLimit, shardFlow } from "../core/batch-size.js";
import type { RunOutcome } from "../core/lease.machine.js";
import type { ShardRef } from "../core/types.js";
import { ErrorCode, isSluiceError } from "../errors.js";
import type {
  Checkpoint,
  DeadLetter,
  DeadLetterQueue,
  FeedFlow,
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
  /**
   * The worker's in-flight budget, records, and the per-consumer cap, both needed to share
   * the budget (`shardFlow`); without them the source's own bounds apply.
   */
  maxBufferedRecords?: number;
  maxAckPending?: number;
  /**
   * How far around the checkpoint a reconciliation compares record ids, ms of stream time
   * either side (default 120 000, JetStream's default duplicate window: the span in which a
   * producer's retry can store a record at a second position).
   */
  reconcileWindowMs?: number;
}

/**
 * The stream no longer holds the checkpoint's record at the checkpoint's sequence: the
 * stream's history changed under the sink (a JetStream replica that diverged after a fault
 * numbers records differently). The pipeline then reconciles by record id.
 */
export interface HistoryMismatchReport {
  ref: ShardRef;
  epoch: number;
  checkpointSeq: number;
  expected: string;
  /** The first message the stream holds at or after `checkpointSeq`, and its fingerprint. */
  foundSeq: number;
  found: string;
  /** Stream time the consumer was rewound to, ms since the epoch (absent: to the beginning). */
  rewindToMs?: number;
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
  onHistoryMismatch?(r: HistoryMismatchReport): void;
  now(): number;
  /** Shards the worker owns or is about to own, this one included; sizes the shard's share. */
  shardsOwned?(): number;
  /**
   * The pipeline's shard count: a record whose `Sluice-Key` maps to another shard is
   * dead-lettered (`KEY_SHARD_MISMATCH`). Without it keys are not checked.
   */
  shards?: number;
}

/** Reconciliation after a history mismatch: commit by record id, not by sequence. */
interface Reconciliation {
  /** Record ids the sink holds around the checkpoint; loaded with the first batch. */
  ids: Set<string> | null;
  checkpointSeq: number;
  /** Stream time after which no record can be a displaced copy, ms (null: unknown). */
  untilMs: number | null;
}

/**
 * Where a consumer starts for a checkpoint: at the checkpoint's own record when the sink knows
 * its fingerprint (the first delivery then proves the stream still numbers records as the sink
 * saw them), else just after it.
 */
function startSeq(cp: Checkpoint): number {
  return cp.seq > 0 && cp.fingerprint !== undefined ? cp.seq : cp.seq + 1;
}

/** Closes a feed still being opened (a prepared one not used), whenever it opens. */
function closeWhenOpen(feed: Promise<ShardFeed | null>): void {
  void feed.then((f) => f?.close()).catch(() => undefined);
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
  /** Where this pipeline reads, for the key check (`PipelineHooks.shards`). */
  private readonly readShard: ReadShard | undefined;
  /** See `prepare`: the checkpoint read before this lease began, and the feed opened there. */
  private startHint: Promise<Checkpoint | null> | undefined;
  private early: Promise<ShardFeed | null> | undefined;
  private isPrepared = false;
  /** See `fenceEarly`. */
  private earlyFence: Promise<Checkpoint> | undefined;
  /** Deliveries below this sequence were committed before the fence: dropped (see `acquire`). */
  private skipBelow = 0;
  /** This lease's in-flight bounds, set at acquisition (undefined: the source's defaults). */
  private flow: FeedFlow | undefined;
  /** The checkpoint's sequence and fingerprint, until the first delivery confirmed or refuted them. */
  private verify: { seq: number; fingerprint: string } | null = null;
  private reconciliation: Reconciliation | null = null;

  constructor(
    readonly ref: ShardRef,
    readonly epoch: number,
    readonly worker: string,
    private readonly ports: PipelinePorts,
    private readonly settings: PipelineSettings,
    private readonly hooks: PipelineHooks,
  ) {
    this.readShard = hooks.shards === undefined ? undefined : { shard: ref.shard, shards: hooks.shards };
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
      if (early) closeWhenOpen(early);
      throw err;
    }
    const t1 = this.hooks.now();
    let overlapped = false;
    if (!this.stopping) {
      // Start at the checkpoint's own record when the sink knows its fingerprint, so the first
      // delivery proves the stream still numbers records as the sink saw them.
      const from = startSeq(cp);
      const check = cp.seq > 0 && cp.fingerprint !== undefined;
      this.pending = null;
      this.reconciliation = null;
      this.verify = check ? { seq: cp.seq, fingerprint: cp.fingerprint! } : null;
      const opened = early && hint && startSeq(hint) <= from ? await early.catch(() => null) : null;
      if (opened) {
        await this.adopt(opened);
        this.skipBelow = from;
        overlapped = true;
      } else {
        if (early) closeWhenOpen(early);
        this.sizeFlow();
        await this.closeFeed();
        this.skipBelow = 0;
        await this.adopt(await this.ports.source.open(this.ref, this.epoch, { seq: from }, this.flow));
      }
      this.nextDelivery = 1;
    } else if (early) {
      closeWhenOpen(early);
    }
    const openMs = this.hooks.now() - (overlapped ? t0 : t1);
    void this.ports.source.removeOlderEpochs(this.ref, this.epoch).catch(() => undefined);
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
        if (this.verify) {
          let checked: SourceMessage[] | null;
          try {
            checked = await this.checkHistory(feed, msgs);
          } catch (err) {
            return { type: "failed", reason: `rewind failed: ${(err as Error).message}` };
          }
          if (!checked) {
            feed = this.feed;
            if (!feed) return { type: "failed", reason: "stopped" };
            continue;
          }
          msgs = checked;
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

  /**
   * The first delivery after an acquisition. The checkpoint's own record is acked and dropped
   * (it is committed); anything else means the stream's history changed, and the consumer is
   * reopened `reconcileWindowMs` of stream time earlier, to reconcile by record id. Returns the
   * messages to process, or null after reopening.
   */
  private async checkHistory(feed: ShardFeed, msgs: SourceMessage[]): Promise<SourceMessage[] | null> {
    const v = this.verify!;
    this.verify = null;
    const first = msgs[0]!;
    const found = messageFingerprint(first);
    if (first.seq === v.seq && found === v.fingerprint) {
      feed.ack(first);
      return msgs.slice(1);
    }
    const windowMs = this.settings.reconcileWindowMs ?? 120_000;
    const at = first.timestampMs;
    this.hooks.onHistoryMismatch?.({
      ref: this.ref,
      epoch: this.epoch,
      checkpointSeq: v.seq,
      expected: v.fingerprint,
      foundSeq: first.seq,
      found,
      ...(at === undefined ? {} : { rewindToMs: at - windowMs }),
    });
    this.reconciliation = {
      ids: null,
      checkpointSeq: v.seq,
      untilMs: at === undefined ? null : at + windowMs,
    };
    this.feed = null;
    await feed.close();
    if (this.stopping) return null;
    await this.adopt(
      await this.ports.source.open(
        this.ref,
        this.epoch,
        at === undefined ? { seq: 1 } : { timeMs: at - windowMs },
        this.flow,
      ),
    );
    this.nextDelivery = 1;
    return null;
  }

  /**
   * In a reconciliation, drops rows the sink already holds (by record id) and says the rest may
   * sit below the checkpoint. The ids around the checkpoint are loaded once, with the first batch.
   */
  private async reconcileRows(
    rc: Reconciliation,
    batch: SourceMessage[],
    rows: SinkRow[],
  ): Promise<SinkRow[]> {
    if (!rc.ids) {
      // Sequences of the diverged history lie near the checkpoint's: take as much again below.
      const first = batch[0]!.seq;
      const span = Math.abs(rc.checkpointSeq - first);
      const from = Math.max(0, Math.min(first, rc.checkpointSeq) - span);
      rc.ids = new Set(await this.ports.sink.recordIds(this.ref, from));
    }
    const ids = rc.ids;
    return rows.filter((r) => !ids.has(r.recordId));
  }

  /** Commits `pending`; returns an outcome only when the run must end. */
  private async commitPending(feed: ShardFeed): Promise<RunOutcome | null> {
    const batch = this.pending;
    if (!batch || batch.length === 0) return null;
    const rows: SinkRow[] = [];
    const dead: DeadLetter[] = [];
    for (const m of batch) {
      const r = decodeRecord(m, this.readShard);
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
    const rc = this.reconciliation;
    let toWrite = rows;
    if (rc) {
      try {
        toWrite = await this.reconcileRows(rc, batch, rows);
      } catch (err) {
        return { type: "failed", reason: `reconciliation failed: ${(err as Error).message}` };
      }
    }
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
      const fingerprint = messageFingerprint(last);
      const res = await bt.commit(() =>
        this.ports.sink.commit(
          this.ref,
          this.epoch,
          this.worker,
          toWrite,
          last.seq,
          rc ? { fingerprint, belowCheckpoint: true } : { fingerprint },
        ),
      );
      if (rc) {
        for (const r of toWrite) rc.ids?.add(r.recordId);
        const past = last.seq > rc.checkpointSeq;
        const ts = last.timestampMs;
        if (past && (rc.untilMs === null || ts === undefined || ts > rc.untilMs)) this.reconciliation = null;
      }
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
        skipped: res.skipped + rows.length - toWrite.length,
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
      if (feed && this.pending && !feed.failure) {
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
  abandon(): void {
    this.stopping = true;
    if (this.early) closeWhenOpen(this.early);
    this.early = undefined;
    void this.close();
  }

  private async close(): Promise<void> {
    const feed = this.feed;
    this.feed = null;
    this.pending = null;
    await feed?.close().catch(() => undefined);
  }
}
