/**
 * One batch's way into the sink: run the stages, store the dead letters, check the lease,
 * commit rows and checkpoint in one fenced sink transaction, then ack the batch once
 * (AckPolicy all). The order is the guarantee: dead letters are stored before the checkpoint
 * passes them, and the ack comes after the commit, so a crash anywhere only causes a
 * redelivery that the sink's rules skip.
 *
 * A commit that fails for a reason a retry can cure (the sink's database restarting, a killed
 * connection, a timeout) is tried again with the same batch (p-retry, waiting on the scheduler's
 * clock), for as long as the lease stays confirmed: the shard stalls, it never skips. The shard's circuit
 * breaker (`core/circuit-breaker.ts`) paces the attempts, so a sink that keeps failing is not
 * hammered by every shard at once.
 */

import pRetry, { AbortError } from "p-retry";
import { messageFingerprint } from "../contract/codec.js";
import { ErrorCode, isSluiceError } from "../contract/errors.js";
import type { ShardRef } from "../contract/ownership.js";
import type { BatchReport, BatchStartReport } from "../contract/pipeline-reports.js";
import type {
  Checkpoint,
  CommitResult,
  DeadLetter,
  DeadLetterQueue,
  PipelineState,
  ShardFeed,
  Sink,
  SinkRow,
  SourceMessage,
} from "../contract/ports.js";
import { type BreakerState, mayTry, onFailure, onSuccess, onTry } from "../core/circuit-breaker.js";
import type { RunOutcome } from "../core/lease.machine.js";
import { sameState } from "../core/sink-rules.js";
import { BatchTrace } from "./batch-trace.js";
import type { HistoryGuard } from "./history-guard.js";
import type { StageContext } from "./stage.js";
import type { StageChain } from "./stage-chain.js";

/** A commit that failed for a retryable reason and will be tried again. */
export interface CommitRetryReport {
  ref: ShardRef;
  epoch: number;
  /** 1 for the first failure of this batch. */
  attempt: number;
  error: string;
  /** The shard's circuit breaker after the failure. */
  breaker: BreakerState;
}

/** A shard waiting for a stage's input (a schema subject not registered yet). */
export interface StageWaitReport {
  ref: ShardRef;
  epoch: number;
  attempt: number;
  /** Why it waits; null once it no longer does. */
  error: string | null;
}

export interface CommitterHooks {
  /** Is the lease confirmed recently enough to commit? Checked before every commit. */
  leaseFresh(): boolean;
  now(): number;
  /** Resolves after `ms` on the scheduler's clock (virtual time in simulation). */
  sleep?(ms: number): Promise<void>;
  /** True once the lease is stopping: a commit being retried gives up. */
  stopping?(): boolean;
  /** The shard's circuit breaker, kept across this shard's leases on this worker. */
  breaker?: { get(): BreakerState; set(s: BreakerState): void };
  /** A commit failed and will be tried again (for logs and status). */
  onCommitRetry?(r: CommitRetryReport): void;
  /** A stage's input is not there yet and the shard waits (`error` null: it came; see `pin`). */
  onStageWait?(r: StageWaitReport): void;
  onBatch?(r: BatchReport): void;
  onBatchStart?(r: BatchStartReport): void;
  /** The pipeline's shard count, for the stages' key check (undefined: keys not checked). */
  shards?: number;
  /**
   * The pipeline config's revision (`configRevision`): given, every commit that takes in
   * records asks the sink for an audit row (`CommitOptions.audit`).
   */
  configRevision?: string;
  /**
   * Record how far dead letters may reach before publishing them (default true; see `pin`).
   * Only the simulator's checker tests switch it off, to prove they catch what it prevents.
   */
  deadLetterMark?: boolean;
}

/** A committed batch: how long the sink transaction took, for the batch sizing. */
export type CommitDone = { ok: true; commitMs: number };
/** The run must end. */
export type CommitEnd = { ok: false; outcome: RunOutcome };

/**
 * The state key of the highest source sequence whose dead letters may have been published: a
 * pinned input changes only once the checkpoint has reached it (see `BatchCommitter.pin`).
 */
export const DEAD_LETTERED_THROUGH = "deadLetteredThrough";

/** The gate of a shard without a breaker. */
const OPEN = { ok: true } as const;

/** Between attempts at one commit: 50 ms doubling to 2 s (the breaker adds its cool-down). */
const retryDelayMs = (attempt: number): number => Math.min(2_000, 50 * 2 ** Math.min(6, attempt - 1));

export class BatchCommitter {
  /** The checkpoint's sequence as this lease last fenced or committed it. */
  private seq = 0;
  /** The inputs pinned with the checkpoint, in force for the next batch. */
  private state: PipelineState = {};
  /**
   * True while a stage's input is missing (see `pin`): the pending batch has not been decided,
   * nothing of it was dead-lettered or committed, so the lease may end without committing it.
   */
  waitingForInput = false;

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

  private wait(ms: number): Promise<void> {
    return this.hooks.sleep ? this.hooks.sleep(ms) : Promise.resolve();
  }

  /** The shard's checkpoint as fenced: where its pinned state starts. */
  start(cp: Checkpoint): void {
    this.seq = cp.seq;
    this.state = cp.state ?? {};
  }

  private ctx(): StageContext {
    return { ref: this.ref, shards: this.hooks.shards, state: this.state, committedSeq: this.seq };
  }

  async commit(feed: ShardFeed, batch: SourceMessage[]): Promise<CommitDone | CommitEnd> {
    const pinned = await this.pin();
    if (pinned) return pinned;
    const last = batch[batch.length - 1]!;
    const pending = last.pending === undefined ? {} : { pending: last.pending };
    let staged: Awaited<ReturnType<StageChain["run"]>>;
    // What the stages move with this batch (a watermark), committed with its rows.
    const next: Record<string, string | number | boolean> = {};
    let toWrite: SinkRow[];
    try {
      staged = await this.chain.run(batch, { ...this.ctx(), next });
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
    let outcome: RunOutcome | null = null;
    try {
      // Before dead letters decided by pinned inputs leave this process, the checkpoint records
      // how far they may reach, so no later attempt re-decides those records by newer inputs.
      const through = Number(this.state[DEAD_LETTERED_THROUGH] ?? 0);
      if (
        dead.length > 0 &&
        this.chain.pinning &&
        through < last.seq &&
        this.hooks.deadLetterMark !== false
      ) {
        const marked = await this.commitState({ ...this.state, [DEAD_LETTERED_THROUGH]: last.seq });
        if (marked) {
          outcome = marked.outcome;
          return marked;
        }
      }
      // Dead letters are stored before the checkpoint passes them, so none can vanish.
      if (dead.length > 0) await bt.deadLetter(dead.length, () => this.deadLetters.publish(dead));
      const fingerprint = messageFingerprint(last);
      const reconciling = this.guard.reconciling;
      const window = this.chain.dedupeWindowMs;
      const moved = Object.keys(next).length > 0;
      let late = 0;
      for (const r of toWrite) if (r.late !== undefined) late++;
      const opts = {
        fingerprint,
        ...(moved ? { state: { ...this.state, ...next } } : {}),
        ...(reconciling ? { belowCheckpoint: true } : {}),
        ...(window === undefined ? {} : { dedupeWindowMs: window }),
        ...(this.hooks.configRevision === undefined
          ? {}
          : {
              audit: {
                firstSeq: batch[0]!.seq,
                deadLettered: dead.length,
                late,
                configRevision: this.hooks.configRevision,
              },
            }),
      };
      const done = await this.attempts(() =>
        bt.commit(() => this.sink.commit(this.ref, this.epoch, this.worker, toWrite, last.seq, opts)),
      );
      if (!done.ok) {
        outcome = done.outcome;
        return done;
      }
      const res = done.result;
      this.seq = res.checkpoint.seq;
      // The sink may have moved the state too (its duplicates count): the next pin builds on it.
      this.state = res.checkpoint.state ?? this.state;
      this.guard.committed(last, toWrite);
      bt.settle(this.ref.pipeline, () => feed.ack(last));
      const commitMs = this.hooks.now() - done.startedAt;
      this.hooks.onBatch?.({
        ref: this.ref,
        epoch: this.epoch,
        committed: res.committed,
        skipped: res.skipped + staged.rows.length - toWrite.length,
        duplicates: res.duplicates ?? 0,
        deadLettered: dead.length,
        routed: staged.routed,
        checkpoint: res.checkpoint.seq,
        commitMs,
        ...pending,
      });
      return { ok: true, commitMs };
    } catch (err) {
      outcome = { type: "failed", reason: `commit failed: ${(err as Error).message}` };
      return { ok: false, outcome };
    } finally {
      bt.end(outcome);
    }
  }

  /**
   * Before a batch is decided: whatever the stages want pinned (a newer schema version) is
   * committed with the checkpoint first, in a commit without rows, so no record is ever decided
   * by an input the checkpoint does not name. A stage whose input is not there yet (a schema
   * subject not registered) holds the shard here, retrying, for as long as the lease lasts.
   *
   * The change waits while an earlier attempt may have dead-lettered records beyond the
   * checkpoint (`DEAD_LETTERED_THROUGH`): those records are decided again by the same inputs, so
   * none is dead-lettered by one attempt and committed by the next. Records that attempt judged
   * valid left no trace (its commit did not land), so deciding them anew is safe.
   * Returns an outcome only when the run must end.
   */
  private async pin(): Promise<CommitEnd | null> {
    for (let attempt = 1; ; attempt++) {
      let want: PipelineState | null;
      try {
        want = await this.chain.pin(this.ctx());
      } catch (err) {
        if (!isSluiceError(err) || !err.retryable || this.hooks.sleep === undefined)
          return {
            ok: false,
            outcome: { type: "failed", reason: `stages failed: ${(err as Error).message}` },
          };
        this.waitingForInput = true;
        if (this.hooks.stopping?.())
          return { ok: false, outcome: { type: "failed", reason: "stopped while a stage waited" } };
        this.hooks.onStageWait?.({ ref: this.ref, epoch: this.epoch, attempt, error: err.message });
        await this.wait(retryDelayMs(attempt));
        continue;
      }
      this.waitingForInput = false;
      if (attempt > 1) this.hooks.onStageWait?.({ ref: this.ref, epoch: this.epoch, attempt, error: null });
      if (!want || sameState(want, this.state)) return null;
      if (this.seq < Number(this.state[DEAD_LETTERED_THROUGH] ?? 0)) return null;
      return this.commitState(want);
    }
  }

  /** Stores `state` with the checkpoint in a commit without rows; an outcome when the run must end. */
  private async commitState(state: PipelineState): Promise<CommitEnd | null> {
    const done = await this.attempts(() =>
      this.sink.commit(this.ref, this.epoch, this.worker, [], this.seq, { state }),
    );
    if (!done.ok) return done;
    this.seq = done.result.checkpoint.seq;
    this.state = done.result.checkpoint.state ?? state;
    return null;
  }

  /**
   * One commit, tried until it succeeds, fails for good, or the lease ends: the circuit breaker
   * paces the attempts, the lease is checked before each, and only retryable errors are retried.
   */
  private async attempts(
    send: () => Promise<CommitResult>,
  ): Promise<{ ok: true; result: CommitResult; startedAt: number } | CommitEnd> {
    let outcome: RunOutcome | null = null;
    let t0 = this.hooks.now();
    const b = this.hooks.breaker;
    // Whether a failed attempt is tried again: only a retryable error, only while the lease
    // is not stopping, only where the scheduler can wait.
    const retrying = (err: unknown): boolean =>
      isSluiceError(err) && err.retryable && this.hooks.sleep !== undefined && !this.hooks.stopping?.();
    const end = (o: RunOutcome): never => {
      outcome = o;
      throw new AbortError(o.type);
    };
    try {
      // p-retry drives the attempts but sleeps nothing itself (`maxTimeout: 0`): every wait is
      // on the scheduler's clock, so the simulator's virtual time paces the retries too.
      const result: CommitResult = await pRetry(
        async () => {
          for (let gate = b ? mayTry(b.get(), this.hooks.now()) : OPEN; !gate.ok; ) {
            await this.wait(gate.waitMs);
            if (this.hooks.stopping?.())
              end({ type: "failed", reason: "stopped while the sink was unavailable" });
            gate = b ? mayTry(b.get(), this.hooks.now()) : OPEN;
          }
          if (b) b.set(onTry(b.get(), this.hooks.now()));
          // The last moment before the commit leaves this process: a pause may have passed while
          // pulling, dead-lettering or waiting for the sink, so the lease is checked here.
          if (!this.hooks.leaseFresh()) end({ type: "stale" });
          t0 = this.hooks.now();
          const r = await send();
          if (b) b.set(onSuccess(b.get()));
          return r;
        },
        {
          retries: Number.POSITIVE_INFINITY,
          minTimeout: 0,
          maxTimeout: 0,
          shouldRetry: ({ error }) => retrying(error),
          onFailedAttempt: async ({ error, attemptNumber }) => {
            if (!retrying(error)) return;
            if (b) b.set(onFailure(b.get(), this.hooks.now()));
            this.hooks.onCommitRetry?.({
              ref: this.ref,
              epoch: this.epoch,
              attempt: attemptNumber,
              error: error.message,
              breaker: b?.get() ?? { kind: "closed", failures: attemptNumber },
            });
            await this.wait(retryDelayMs(attemptNumber));
          },
        },
      );
      return { ok: true, result, startedAt: t0 };
    } catch (err) {
      // A stale lease or a stop ended the attempts (see `end`).
      if (outcome) return { ok: false, outcome };
      if (isSluiceError(err, ErrorCode.Fenced)) {
        return {
          ok: false,
          outcome: {
            type: "fenced",
            reason: err.message,
            ...(err.fencedBy === undefined ? {} : { fencedBy: err.fencedBy }),
          },
        };
      }
      return { ok: false, outcome: { type: "failed", reason: `commit failed: ${(err as Error).message}` } };
    }
  }
}
