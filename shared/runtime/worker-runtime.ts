/**
 * A worker: follows the assignment entries that name it, runs one lease machine per shard,
 * heartbeats to the coordinator, and drains gracefully when asked to leave.
 *
 * Lease confirmation: the leader's heartbeat reply lists the epochs it grants this worker.
 * A grant counts from the moment the heartbeat was *sent*, so a reply that arrives after a
 * pause confirms nothing new. A pipeline whose lease is older than `leaseTtlMs` re-reads the
 * assignment from the store before its next commit (the machine's `verifying` state).
 */
import type { TimingConfig, WorkerConfig } from "../contract/config.js";
import type { Logger } from "../contract/logger.js";
import {
  type AssignmentEntry,
  type Heartbeat,
  parseShardKey,
  type RuleCounts,
  type ShardRef,
  type SinkTrouble,
  type StageWait,
} from "../contract/ownership.js";
import type { BatchReport, BatchStartReport, HistoryMismatchReport } from "../contract/pipeline-reports.js";
import type {
  AssignmentStore,
  ReleasedNotice,
  Scheduler,
  Versioned,
  WorkerControlBus,
} from "../contract/ports.js";
import { acceptEntry, entryAction, moveAction } from "../core/assignment-entries.js";
import { type BreakerState, closedBreaker } from "../core/circuit-breaker.js";
import type { CommitRetryReport } from "../pipeline/batch-committer.js";
import type { PipelinePorts } from "../pipeline/pipeline-options.js";
import { ShardPipeline } from "../pipeline/shard-pipeline.js";
import type { Stage } from "../pipeline/stage.js";
import { TelemetryAttributes as A } from "../telemetry/attributes.js";
import { inSpan } from "../telemetry/tracing.js";
import { createShardLease, type LeaseActor } from "./shard-lease.js";

export interface WorkerDeps extends PipelinePorts {
  id: string;
  capacity: number;
  assignments: AssignmentStore;
  bus: WorkerControlBus;
  scheduler: Scheduler;
  timing: TimingConfig;
  /** Worker settings; `reconcileWindowMs` follows the pipelines' duplicate window. */
  settings: WorkerConfig & { reconcileWindowMs?: number; deadLetterMark?: boolean };
  log: Logger;
  /** A pipeline's shard count, so that records with another shard's key are dead-lettered. */
  shardsOf?(pipeline: string): number | undefined;
  /** A pipeline's stages after decode (none: decode only). */
  stagesOf?(pipeline: string): readonly Stage[] | undefined;
  /** A pipeline's config revision, recorded in each batch's audit row (none: no audit rows). */
  configRevisionOf?(pipeline: string): string | undefined;
  onBatch?(r: BatchReport): void;
  onBatchStart?(r: BatchStartReport): void;
  onHistoryMismatch?(r: HistoryMismatchReport): void;
  onLeaseEvent?(e: LeaseEventReport): void;
  onCommitRetry?(r: CommitRetryReport): void;
  /** Quality rules' counts since start, `pipeline.rule` -> counts, sent in heartbeats. */
  ruleCounts?(): Record<string, RuleCounts> | undefined;
  /**
   * This worker fenced a shard's sink at a new lease's epoch (once per lease; for the audit
   * stream). Called on the acquisition path: it must return at once and never throw.
   */
  onFence?(r: FenceReport): void;
}

/** A fence of a shard's sink by a lease of this worker (see `WorkerDeps.onFence`). */
export interface FenceReport {
  ref: ShardRef;
  epoch: number;
  /**
   * The epoch of the shard's previous assignment below `epoch` and its owner, as this worker saw
   * them; null when it saw none (it started after that assignment was written).
   */
  previous: { epoch: number; owner: string | null } | null;
}

export interface LeaseEventReport {
  shard: string;
  epoch: number;
  event: "acquiring" | "active" | "released" | "fenced" | "verifying" | "draining";
  reason?: string | null;
}

/** Epochs per shard whose owner a worker remembers (`WorkerRuntime.epochsSeen`). */
const EPOCHS_KEPT = 4;

interface Held {
  epoch: number;
  actor: LeaseActor;
  pipeline: ShardPipeline;
}

export class WorkerRuntime {
  private readonly leases = new Map<string, Held>();
  /** shard -> its commits' circuit breaker, kept across its leases here (absent: closed). */
  private readonly breakers = new Map<string, BreakerState>();
  /** shard -> since when its commits fail and why, until one succeeds (sent in heartbeats). */
  private readonly sinkTrouble = new Map<string, SinkTrouble>();
  /** shard -> since when it waits for a stage's input and why (sent in heartbeats). */
  private readonly waiting = new Map<string, StageWait>();
  /** shard -> latest entry seen from the store. */
  private readonly latest = new Map<string, AssignmentEntry | null>();
  /**
   * shard -> epoch -> owner of the entries seen, the last `EPOCHS_KEPT` epochs: what a fence
   * report names as the epoch it fenced out.
   */
  private readonly epochsSeen = new Map<string, Map<number, string | null>>();
  /** shard -> KV revision of `latest`; older entries arriving late are ignored. */
  private readonly revisions = new Map<string, number>();
  /** shard -> { epoch, time from which the lease is confirmed }. */
  private readonly confirmed = new Map<string, { epoch: number; at: number }>();
  /**
   * shard -> the pipeline of the epoch a shard moving here will have, prepared when the move
   * began (a revoking entry naming this worker next): its consumer is opened while the previous
   * owner drains (`ShardPipeline.prepare`), so the new lease only has to fence.
   */
  private readonly prepared = new Map<string, ShardPipeline>();
  private watchStop: (() => void) | null = null;
  private releasedStop: (() => void) | null = null;
  private assignedStop: (() => void) | null = null;
  private hbTimer: unknown = null;
  private leaving = false;
  private started = false;
  private stopped: Promise<void> | null = null;
  /** Time of the last heartbeat a leader answered. */
  private lastLeaderReply = 0;
  /** A leader has answered a heartbeat of this worker: it is a member, its grants known. */
  private joined = false;

  constructor(private readonly d: WorkerDeps) {}

  get id(): string {
    return this.d.id;
  }

  /**
   * Why the worker is not ready for work (`/readyz`), or null when it is: started, not
   * draining, and answered by a leader within the failure timeout, so it is a member and runs
   * the leases the leader grants it.
   */
  notReady(): string | null {
    if (!this.started) return "not started";
    if (this.stopped || this.leaving) return "draining";
    if (!this.joined) return "no leader has answered a heartbeat yet";
    const silentMs = this.d.scheduler.now() - this.lastLeaderReply;
    if (silentMs > this.d.timing.failureTimeoutMs) return `no leader has answered for ${silentMs} ms`;
    return null;
  }

  heldShards(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [k, h] of this.leases) out[k] = h.epoch;
    return out;
  }

  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    this.lastLeaderReply = this.d.scheduler.now();
    const w = await this.d.assignments.watch((key, v) => this.onEntry(key, v));
    this.watchStop = () => w.stop();
    this.releasedStop = this.d.bus.onReleased?.((n) => this.onReleased(n)) ?? null;
    this.assignedStop =
      this.d.bus.onAssigned?.((n) => this.onEntry(n.shard, { value: n.entry, revision: n.revision })) ?? null;
    this.beat();
  }

  private beat(): void {
    if (this.stopped && !this.leaving) return;
    const sentAt = this.d.scheduler.now();
    const hb: Heartbeat = {
      worker: this.d.id,
      capacity: this.d.capacity,
      held: this.heldShards(),
      prepared: this.preparedShards(),
      leaving: this.leaving,
      sentAt,
      ...(this.sinkTrouble.size > 0 ? { sinkTrouble: Object.fromEntries(this.sinkTrouble) } : {}),
      ...this.diagnostics(),
    };
    void this.d.bus
      .heartbeat(hb, Math.max(100, this.d.timing.heartbeatMs * 2))
      .then((g) => {
        if (!g) return;
        this.lastLeaderReply = this.d.scheduler.now();
        this.joined = true;
        for (const [shard, epoch] of Object.entries(g.grants)) {
          const h = this.leases.get(shard);
          if (h && h.epoch === epoch) this.confirm(shard, epoch, sentAt);
          // Granted but not running (a lease ended by a stale message): take it up again.
          const e = this.latest.get(shard);
          if (!h && !this.leaving && e?.owner === this.d.id && e.phase === "active" && e.epoch === epoch) {
            this.startLease(shard, epoch);
          }
        }
      })
      .catch(() => undefined);
    this.hbTimer = this.d.scheduler.setTimeout(() => this.beat(), this.d.timing.heartbeatMs);
  }

  /** Heartbeat now instead of at the next tick (the timer chain goes on from here). */
  private beatNow(): void {
    if (this.stopped || this.hbTimer === null) return;
    this.d.scheduler.clearTimeout(this.hbTimer);
    this.beat();
  }

  /** Shards moving here whose consumer is open: shard -> the epoch prepared. */
  private preparedShards(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [shard, p] of this.prepared) if (p.prepared) out[shard] = p.epoch;
    return out;
  }

  /**
   * Shards this worker runs, or is assigned (active entries naming it, and entries naming it
   * next), whichever is more.
   */
  private shardsOwned(): number {
    let assigned = 0;
    for (const e of this.latest.values()) {
      if (e?.owner === this.d.id ? e.phase === "active" : e?.next === this.d.id) assigned++;
    }
    return Math.max(assigned, this.leases.size);
  }

  private confirm(shard: string, epoch: number, at: number): void {
    const c = this.confirmed.get(shard);
    if (!c || c.epoch !== epoch || c.at < at) this.confirmed.set(shard, { epoch, at });
  }

  private leaseFresh(shard: string, epoch: number): boolean {
    const c = this.confirmed.get(shard);
    return !!c && c.epoch === epoch && this.d.scheduler.now() - c.at <= this.d.timing.leaseTtlMs;
  }

  /** An entry heard through the watch or announced (see `core/assignment-entries.ts`). */
  private onEntry(shard: string, v: Versioned<AssignmentEntry>): void {
    if (!parseShardKey(shard)) return;
    const e = v.value;
    const held = this.leases.get(shard);
    const known = { entry: this.latest.get(shard), revision: this.revisions.get(shard) ?? 0 };
    if (!acceptEntry(known, e, v.revision, held?.epoch)) return;
    this.revisions.set(shard, v.revision);
    this.latest.set(shard, e);
    if (e) this.noteEpoch(shard, e);
    this.noteMove(shard, e);
    const action = entryAction(this.d.id, e, held?.epoch, this.leaving);
    switch (action.type) {
      case "start":
        this.startLease(shard, action.epoch);
        break;
      case "fence":
        held?.actor.send({ type: "FENCE", reason: action.reason });
        break;
      case "revoke":
        held?.actor.send({ type: "REVOKE" });
        break;
      case "release":
        this.d.bus.released({ worker: this.d.id, shard, epoch: action.epoch });
        break;
      case "none":
        break;
    }
  }

  private noteEpoch(shard: string, e: AssignmentEntry): void {
    const seen = this.epochsSeen.get(shard) ?? new Map<number, string | null>();
    this.epochsSeen.set(shard, seen);
    if (seen.has(e.epoch)) return;
    seen.set(e.epoch, e.owner);
    if (seen.size > EPOCHS_KEPT) seen.delete(Math.min(...seen.keys()));
  }

  /** The highest epoch below `epoch` seen for `shard`, with its owner (see `FenceReport`). */
  private epochBefore(shard: string, epoch: number): FenceReport["previous"] {
    let best: FenceReport["previous"] = null;
    for (const [e, owner] of this.epochsSeen.get(shard) ?? []) {
      if (e < epoch && (best === null || e > best.epoch)) best = { epoch: e, owner };
    }
    return best;
  }

  /**
   * Prepares the next epoch of a shard about to move here (the coordinator grants it at
   * `epoch + 1` once the owner has released), and tells the coordinator with a heartbeat as
   * soon as its consumer is open (it revokes the owner then); calls the preparation off when
   * the move is off.
   */
  private noteMove(shard: string, e: AssignmentEntry | null): void {
    const action = moveAction(this.d.id, e, this.leaving, this.prepared.get(shard)?.epoch);
    if (action.type === "discard") this.discardPrepared(shard);
    if (action.type !== "prepare") return;
    this.discardPrepared(shard);
    const pipeline = this.newPipeline(shard, action.epoch);
    this.prepared.set(shard, pipeline);
    void pipeline.prepare(this.d.sink.checkpoint(pipeline.ref)).then((open) => {
      if (open && this.prepared.get(shard) === pipeline && e?.phase === "active") this.beatNow();
    });
  }

  /** A shard prepared here was released by its owner: fence now (`ShardPipeline.fenceEarly`). */
  private onReleased(n: ReleasedNotice): void {
    // A worker giving up a shard the sink fenced past it is not a drain: no early fence.
    if (n.fencedBy !== undefined || this.leaving) return;
    const p = this.prepared.get(n.shard);
    if (p && p.epoch === n.epoch + 1) p.fenceEarly();
  }

  /**
   * Drops a prepared hand-off. Its consumer is deleted once its open has settled (deleted
   * earlier, a consumer still being created would outlive the hand-off until the server's hour
   * of inactivity removes it), unless the shard has reached that epoch by then (the consumer
   * may be the new owner's, and a later epoch's lease removes it anyway).
   */
  private discardPrepared(shard: string): void {
    const p = this.prepared.get(shard);
    if (!p) return;
    this.prepared.delete(shard);
    void p.abandon().then(() => {
      const e = this.latest.get(shard);
      if (!e || e.epoch < p.epoch) return this.d.source.remove(p.ref, p.epoch).catch(() => undefined);
    });
  }

  /** Waiting shards still held here, and the rules' counts, for a heartbeat. */
  private diagnostics(): Pick<Heartbeat, "waiting" | "rules"> {
    for (const shard of this.waiting.keys()) if (!this.leases.has(shard)) this.waiting.delete(shard);
    const rules = this.d.ruleCounts?.();
    return {
      ...(this.waiting.size > 0 ? { waiting: Object.fromEntries(this.waiting) } : {}),
      ...(rules && Object.keys(rules).length > 0 ? { rules } : {}),
    };
  }

  /** The data path of one lease, reporting to this worker. */
  private newPipeline(shard: string, epoch: number): ShardPipeline {
    const ref = parseShardKey(shard)!;
    const log = this.d.log.child({ shard, epoch });
    return new ShardPipeline(ref, epoch, this.d.id, this.d, this.d.settings, {
      leaseFresh: () => this.leaseFresh(shard, epoch),
      now: () => this.d.scheduler.now(),
      shardsOwned: () => this.shardsOwned(),
      shards: this.d.shardsOf?.(ref.pipeline),
      stages: this.d.stagesOf?.(ref.pipeline),
      configRevision: this.d.configRevisionOf?.(ref.pipeline),
      onFenced: () => {
        try {
          this.d.onFence?.({ ref, epoch, previous: this.epochBefore(shard, epoch) });
        } catch (err) {
          log.warn({ err: (err as Error).message }, "fence report failed");
        }
      },
      onBatch: (r) => {
        this.sinkTrouble.delete(shard);
        this.waiting.delete(shard);
        this.d.onBatch?.(r);
      },
      onBatchStart: (r) => this.d.onBatchStart?.(r),
      sleep: (ms) => new Promise<void>((resolve) => this.d.scheduler.setTimeout(resolve, ms)),
      breaker: {
        get: () => this.breakers.get(shard) ?? closedBreaker,
        set: (b) => {
          if (b.kind === "closed" && b.failures === 0) this.breakers.delete(shard);
          else this.breakers.set(shard, b);
        },
      },
      onCommitRetry: (r) => {
        this.sinkTrouble.set(shard, {
          since: this.sinkTrouble.get(shard)?.since ?? this.d.scheduler.now(),
          error: r.error,
          breaker: r.breaker.kind,
        });
        // The first failure and every tenth after it: a sink down for a while is not a log flood.
        if (r.attempt === 1 || r.attempt % 10 === 0)
          log.warn(
            { attempt: r.attempt, breaker: r.breaker.kind, err: r.error },
            "commit failed; the shard waits and retries",
          );
        this.d.onCommitRetry?.(r);
      },
      onStageWait: (r) => {
        if (r.error === null) {
          this.waiting.delete(shard);
          log.info({}, "the stage input came: the shard goes on");
          return;
        }
        this.waiting.set(shard, {
          since: this.waiting.get(shard)?.since ?? this.d.scheduler.now(),
          reason: r.error,
        });
        if (r.attempt === 1 || r.attempt % 20 === 0)
          log.warn({ attempt: r.attempt, reason: r.error }, "the shard waits for a stage input");
      },
      onHistoryMismatch: (r) => {
        // Not a sluice fault but the broker's: loud, because the stream broke its own contract.
        log.error(
          {
            checkpointSeq: r.checkpointSeq,
            expected: r.expected,
            foundSeq: r.foundSeq,
            found: r.found,
            rewindTo: r.rewindToMs === undefined ? null : new Date(r.rewindToMs).toISOString(),
          },
          "stream history changed under the checkpoint: reconciling by record id",
        );
        this.d.onHistoryMismatch?.(r);
      },
      onStreamBehind: (r) => {
        const reason = `checkpoint at ${r.checkpointSeq}, but the stream ends at ${r.streamLastSeq}: the sink was written from another stream (deleted and made again, or another cluster's); what this one stores below ${r.checkpointSeq} is not read`;
        log.error({ checkpointSeq: r.checkpointSeq, streamLastSeq: r.streamLastSeq }, reason);
        this.waiting.set(shard, { since: this.waiting.get(shard)?.since ?? this.d.scheduler.now(), reason });
      },
      onStreamTrimmed: (r) => {
        const fields = { checkpointSeq: r.checkpointSeq, streamFirstSeq: r.streamFirstSeq };
        if (r.removedAfterCheckpoint === 0)
          log.info(
            fields,
            "the stream's limits removed the checkpoint's own record, and nothing after it: the history check that follows reconciles by record id",
          );
        else
          log.error(
            { ...fields, removedAfterCheckpoint: r.removedAfterCheckpoint },
            `the stream no longer holds sequences ${r.checkpointSeq + 1} to ${r.streamFirstSeq - 1}, after this shard's checkpoint: its limits (max_age, max_msgs, max_bytes) or a purge removed them before they were committed, and this shard's records among them are lost`,
          );
      },
    });
  }

  private startLease(shard: string, epoch: number): void {
    const log = this.d.log.child({ shard, epoch });
    let pipeline = this.prepared.get(shard);
    if (pipeline?.epoch === epoch) this.prepared.delete(shard);
    else {
      this.discardPrepared(shard);
      pipeline = this.newPipeline(shard, epoch);
    }
    this.confirm(shard, epoch, this.d.scheduler.now());
    log.debug({ prepared: pipeline.prepared }, "lease starting");
    const { actor, takeHandoffSpan } = createShardLease({
      shard,
      epoch,
      worker: this.d.id,
      pipeline,
      scheduler: this.d.scheduler,
      log,
      stillOwner: async () => {
        const startedAt = this.d.scheduler.now();
        const v = await this.d.assignments.get(shard);
        const mine = v.value?.owner === this.d.id && v.value.epoch === epoch;
        if (mine) this.confirm(shard, epoch, startedAt);
        return mine;
      },
      nextOwner: () => this.latest.get(shard)?.next,
      leaving: () => this.leaving,
    });
    const held: Held = { epoch, actor, pipeline };
    this.leases.set(shard, held);
    let last = "";
    actor.subscribe({
      next: (snap) => {
        const state = String(snap.value);
        if (state === last) return;
        last = state;
        if (state === "acquiring" || state === "active" || state === "verifying" || state === "draining") {
          this.d.onLeaseEvent?.({ shard, epoch, event: state });
          log.debug({ state }, "lease state");
        }
      },
      complete: () => {
        const out = actor.getSnapshot().output;
        if (this.leases.get(shard) === held) this.leases.delete(shard);
        this.confirmed.delete(shard);
        const result = out?.result ?? "released";
        this.d.onLeaseEvent?.({ shard, epoch, event: result, reason: out?.reason ?? null });
        const span = takeHandoffSpan();
        const report = (): void => {
          log.info({ result, reason: out?.reason ?? null }, `lease ${result}`);
          if (result === "released") this.d.bus.released({ worker: this.d.id, shard, epoch });
        };
        if (span) {
          span.setAttribute(A.leaseResult, result);
          inSpan(span, report);
          span.end();
        } else report();
        const cur = this.latest.get(shard);
        if (
          result === "fenced" &&
          out?.fencedBy != null &&
          out.fencedBy > epoch &&
          cur?.owner === this.d.id &&
          cur.epoch === epoch
        ) {
          // The sink is ahead of the assignment (say, the KV was recreated over an old sink):
          // tell the coordinator, or nobody would ever move the shard past the fence.
          this.d.bus.released({ worker: this.d.id, shard, epoch, fencedBy: out.fencedBy });
        }
        // A newer epoch for this worker may have arrived meanwhile.
        const e = this.latest.get(shard);
        if (e && e.owner === this.d.id && e.phase === "active" && e.epoch > epoch && !this.leaving) {
          this.startLease(shard, e.epoch);
        }
      },
      error: (err) => log.error({ err }, "lease actor failed"),
    });
    actor.start();
  }

  /**
   * Leave the cluster: stop taking shards, let the coordinator revoke them one by one (each
   * drained and committed), and fall back to draining locally if no leader answers.
   * Idempotent; resolves when every lease has ended.
   */
  drain(deadlineMs = 30_000): Promise<void> {
    this.stopped ??= this.drainAll(deadlineMs);
    return this.stopped;
  }

  private async drainAll(deadlineMs: number): Promise<void> {
    this.leaving = true;
    for (const shard of [...this.prepared.keys()]) this.discardPrepared(shard);
    const start = this.d.scheduler.now();
    const leaderless = Math.max(this.d.timing.leaderTtlMs, this.d.timing.heartbeatMs * 5);
    await new Promise<void>((resolve) => {
      const check = (): void => {
        const now = this.d.scheduler.now();
        if (this.leases.size === 0) {
          resolve();
          return;
        }
        const noLeader = now - this.lastLeaderReply > leaderless;
        if (noLeader || now - start > deadlineMs) {
          for (const h of this.leases.values()) h.actor.send({ type: "REVOKE" });
        }
        this.d.scheduler.setTimeout(check, 20);
      };
      check();
    });
    this.stopNow();
  }

  /** Stop timers and the watch without draining (used after drain, and on crash-like stops). */
  stopNow(): void {
    this.leaving = true;
    this.stopped ??= Promise.resolve();
    if (this.hbTimer !== null) this.d.scheduler.clearTimeout(this.hbTimer);
    this.hbTimer = null;
    this.watchStop?.();
    this.watchStop = null;
    this.releasedStop?.();
    this.releasedStop = null;
    this.assignedStop?.();
    this.assignedStop = null;
    for (const shard of [...this.prepared.keys()]) this.discardPrepared(shard);
    for (const h of this.leases.values()) h.actor.stop();
  }
}
