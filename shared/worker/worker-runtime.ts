/**
 * A worker: follows the assignment entries that name it, runs one lease machine per shard,
 * heartbeats to the coordinator, and drains gracefully when asked to leave.
 *
 * Lease confirmation: the leader's heartbeat reply lists the epochs it grants this worker.
 * A grant counts from the moment the heartbeat was *sent*, so a reply that arrives after a
 * pause confirms nothing new. A pipeline whose lease is older than `leaseTtlMs` re-reads the
 * assignment from the store before its next commit (the machine's `verifying` state).
 */
import { ROOT_CONTEXT, type Span, SpanKind } from "@opentelemetry/api";
import { type ActorRefFrom, createActor, fromPromise } from "xstate";
import type { TimingConfig, WorkerConfig } from "../config.js";
import { leaseMachine, type RunOutcome, type ShardLeaseArgs } from "../core/lease.machine.js";
import { type AssignmentEntry, type Heartbeat, parseShardKey } from "../core/types.js";
import type { Logger } from "../logger.js";
import type { AssignmentStore, ReleasedNotice, Scheduler, Versioned, WorkerControlBus } from "../ports.js";
import { TelemetryAttributes as A, SpanNames } from "../telemetry/attributes.js";
import { getTracer, inSpan, recordFailure, withSpan } from "../telemetry/tracing.js";
import {
  type BatchReport,
  type BatchStartReport,
  type HistoryMismatchReport,
  type PipelinePorts,
  ShardPipeline,
} from "./shard-pipeline.js";

export interface WorkerDeps extends PipelinePorts {
  id: string;
  capacity: number;
  assignments: AssignmentStore;
  bus: WorkerControlBus;
  scheduler: Scheduler;
  timing: TimingConfig;
  /** Worker settings; `reconcileWindowMs` follows the pipelines' duplicate window. */
  settings: WorkerConfig & { reconcileWindowMs?: number };
  log: Logger;
  /** A pipeline's shard count, so that records with another shard's key are dead-lettered. */
  shardsOf?(pipeline: string): number | undefined;
  onBatch?(r: BatchReport): void;
  onBatchStart?(r: BatchStartReport): void;
  onHistoryMismatch?(r: HistoryMismatchReport): void;
  onLeaseEvent?(e: LeaseEventReport): void;
}

export interface LeaseEventReport {
  shard: string;
  epoch: number;
  event: "acquiring" | "active" | "released" | "fenced" | "verifying" | "draining";
  reason?: string | null;
}

interface Held {
  epoch: number;
  actor: ActorRefFrom<typeof leaseMachine>;
  pipeline: ShardPipeline;
}

export class WorkerRuntime {
  private readonly leases = new Map<string, Held>();
  /** shard -> latest entry seen from the store. */
  private readonly latest = new Map<string, AssignmentEntry | null>();
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

  constructor(private readonly d: WorkerDeps) {}

  get id(): string {
    return this.d.id;
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
    };
    void this.d.bus
      .heartbeat(hb, Math.max(100, this.d.timing.heartbeatMs * 2))
      .then((g) => {
        if (!g) return;
        this.lastLeaderReply = this.d.scheduler.now();
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

  private onEntry(shard: string, v: Versioned<AssignmentEntry>): void {
    if (!parseShardKey(shard)) return;
    const e = v.value;
    const held = this.leases.get(shard);
    // Entries are judged by epoch, not only by KV revision: a write that watchers saw but the
    // KV then lost (a phantom, seen on NATS node failures) leaves its revision to be reused by
    // the next real write, which must not be ignored. A late entry of the same epoch at an
    // older revision is ignored too: an `active` overtaken by its `revoking` would otherwise
    // start a lease this worker has just released.
    const prev = this.latest.get(shard);
    const prevRev = this.revisions.get(shard) ?? 0;
    if (
      e &&
      prev &&
      (e.epoch < prev.epoch ? v.revision <= prevRev : e.epoch === prev.epoch && v.revision < prevRev)
    )
      return; // a late, older entry
    // The same write twice: once announced by the coordinator, once through the watch.
    if (v.revision === prevRev && sameEntry(prev, e)) return;
    if (held && e && e.epoch < held.epoch) return; // older than the lease running here
    this.revisions.set(shard, v.revision);
    this.latest.set(shard, e);
    this.noteMove(shard, e);
    if (e && e.owner === this.d.id) {
      if (held && held.epoch < e.epoch) {
        held.actor.send({ type: "FENCE", reason: `reassigned to self at epoch ${e.epoch}` });
        return; // the new epoch starts when the old lease has stopped
      }
      if (e.phase === "active") {
        // A running lease is not confirmed by an entry: the entry may have been written long
        // before it arrives (this worker was paused, say), and the same epoch is re-stated
        // whenever a move is announced or called off. Heartbeat grants, timed from their
        // sending, confirm it.
        if (!held && !this.leaving) this.startLease(shard, e.epoch);
      } else if (held) {
        held.actor.send({ type: "REVOKE" });
      } else {
        // Asked to release what this worker never started: release at once.
        this.d.bus.released({ worker: this.d.id, shard, epoch: e.epoch });
      }
      return;
    }
    if (held && (!e || e.epoch > held.epoch)) {
      held.actor.send({
        type: "FENCE",
        reason: `shard now owned by ${e?.owner ?? "nobody"} at epoch ${e?.epoch}`,
      });
    } else if (held && e && e.owner !== this.d.id) {
      held.actor.send({ type: "REVOKE" });
    }
  }

  /**
   * Prepares the next epoch of a shard about to move here (the coordinator grants it at
   * `epoch + 1` once the owner has released), and tells the coordinator with a heartbeat as
   * soon as its consumer is open (it revokes the owner then); calls the preparation off when
   * the move is off.
   */
  private noteMove(shard: string, e: AssignmentEntry | null): void {
    const me = this.d.id;
    if (e && e.next === me && e.owner !== me && !this.leaving) {
      const epoch = e.epoch + 1;
      if (this.prepared.get(shard)?.epoch === epoch) return;
      this.discardPrepared(shard);
      const pipeline = this.newPipeline(shard, epoch);
      this.prepared.set(shard, pipeline);
      void pipeline.prepare(this.d.sink.checkpoint(pipeline.ref)).then((open) => {
        if (open && this.prepared.get(shard) === pipeline && e.phase === "active") this.beatNow();
      });
    } else if (!(e && e.owner === me && e.phase === "active")) {
      this.discardPrepared(shard);
    }
  }

  /** A shard prepared here was released by its owner: fence now (`ShardPipeline.fenceEarly`). */
  private onReleased(n: ReleasedNotice): void {
    // A worker giving up a shard the sink fenced past it is not a drain: no early fence.
    if (n.fencedBy !== undefined || this.leaving) return;
    const p = this.prepared.get(n.shard);
    if (p && p.epoch === n.epoch + 1) p.fenceEarly();
  }

  /**
   * Drops a prepared hand-off. Its consumer is deleted unless the shard has reached that epoch
   * meanwhile (then it may be the new owner's, and a later epoch's lease removes it anyway).
   */
  private discardPrepared(shard: string): void {
    const p = this.prepared.get(shard);
    if (!p) return;
    this.prepared.delete(shard);
    p.abandon();
    const e = this.latest.get(shard);
    if (!e || e.epoch < p.epoch) void this.d.source.remove(p.ref, p.epoch).catch(() => undefined);
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
      onBatch: (r) => this.d.onBatch?.(r),
      onBatchStart: (r) => this.d.onBatchStart?.(r),
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
    });
  }

  private startLease(shard: string, epoch: number): void {
    const ref = parseShardKey(shard)!;
    const log = this.d.log.child({ shard, epoch });
    let pipeline = this.prepared.get(shard);
    if (pipeline?.epoch === epoch) this.prepared.delete(shard);
    else {
      this.discardPrepared(shard);
      pipeline = this.newPipeline(shard, epoch);
    }
    const spanAttrs = {
      [A.pipeline]: ref.pipeline,
      [A.shard]: ref.shard,
      [A.epoch]: epoch,
      [A.worker]: this.d.id,
      [A.nodeId]: this.d.id,
    };
    // Open from the start of a drain until the release notice is sent (or the lease ends otherwise).
    let handoff: Span | null = null;
    let acquireFailures = 0;
    this.confirm(shard, epoch, this.d.scheduler.now());
    log.debug({ prepared: pipeline.prepared }, "lease starting");
    const machine = leaseMachine.provide({
      actors: {
        // Fence the sink, remove older epochs' consumers, open this epoch's consumer.
        acquire: fromPromiseOf(() =>
          withSpan(
            SpanNames.leaseAcquire,
            // Each acquisition is a trace of its own: fence, consumer clean-up, consumer open.
            { kind: SpanKind.INTERNAL, attributes: spanAttrs, parent: ROOT_CONTEXT },
            async (span) => {
              let r: Awaited<ReturnType<ShardPipeline["acquire"]>>;
              try {
                r = await pipeline.acquire();
              } catch (err) {
                // Each failed attempt is visible as it happens (the lease machine backs off,
                // 50 ms doubling to 2 s, so this logs at most a few lines per second per shard).
                acquireFailures++;
                log.warn(
                  { attempt: acquireFailures, err: (err as Error).message },
                  "lease acquisition failed",
                );
                throw err;
              }
              span.setAttribute(A.checkpoint, r.checkpoint);
              const { fenceMs, openMs } = r;
              const at = {
                checkpoint: r.checkpoint,
                fenceMs: Math.round(fenceMs),
                openMs: Math.round(openMs),
                ...(r.overlapped ? { overlapped: true } : {}),
                ...(r.fencedEarly ? { fencedEarly: true } : {}),
                ...(r.maxAckPending === undefined ? {} : { maxAckPending: r.maxAckPending }),
              };
              // Overlapped, both are timed from the start of the acquisition.
              const took = r.overlapped ? Math.max(fenceMs, openMs) : fenceMs + openMs;
              if (took > 1_000) log.warn(at, "slow lease acquisition");
              else log.info(at, "lease acquired");
              return { checkpoint: r.checkpoint };
            },
          ),
        ),
        run: fromPromiseOf<RunOutcome>(async () => {
          const out = await pipeline.run();
          // A run that failed is re-acquired after a backoff; why it failed explains the pause.
          if (out.type === "failed" && out.reason !== "stopped")
            log.info({ reason: out.reason }, "lease run failed; re-acquiring");
          return out;
        }),
        verify: fromPromiseOf(async () => {
          const startedAt = this.d.scheduler.now();
          const v = await this.d.assignments.get(shard);
          const mine = v.value?.owner === this.d.id && v.value.epoch === epoch;
          if (mine) this.confirm(shard, epoch, startedAt);
          return mine ? ("owner" as const) : ("lost" as const);
        }),
        drain: fromPromiseOf(async () => {
          const next = this.latest.get(shard)?.next;
          handoff = getTracer().startSpan(
            SpanNames.leaseHandoff,
            {
              kind: SpanKind.INTERNAL,
              attributes: {
                ...spanAttrs,
                // Asked by the coordinator (revoking entry or new owner), or leaving on its own.
                [A.handoffReason]: this.leaving ? "leaving" : "revoked",
                ...(next ? { [A.next]: next } : {}),
              },
            },
            ROOT_CONTEXT,
          );
          const span = handoff;
          try {
            await inSpan(span, () => pipeline.drain());
          } catch (err) {
            recordFailure(span, err);
            throw err;
          }
        }),
      },
      actions: { abandon: () => pipeline.abandon() },
    });
    const actor = createActor(machine, {
      input: {
        shard,
        epoch,
        worker: this.d.id,
        retryBaseMs: 50,
        retryMaxMs: 2000,
      },
      clock: this.d.scheduler,
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
        const span = handoff;
        handoff = null;
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

function sameEntry(a: AssignmentEntry | null | undefined, b: AssignmentEntry | null): boolean {
  if (!a || !b) return a === b;
  return (
    a.owner === b.owner &&
    a.epoch === b.epoch &&
    a.phase === b.phase &&
    (a.next ?? null) === (b.next ?? null) &&
    a.at === b.at
  );
}

function fromPromiseOf<T>(fn: () => Promise<T>) {
  return fromPromise<T, ShardLeaseArgs>(() => fn());
}
