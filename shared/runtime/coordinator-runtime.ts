/**
 * A coordinator process's logic: follows the assignment entries and the workers'
 * heartbeats at all times (so a standby is warm), contends for the leader lease, and while
 * leader executes the commands of the pure coordinator core.
 */
import { ROOT_CONTEXT, SpanKind } from "@opentelemetry/api";
import type { TimingConfig } from "../contract/config.js";
import { ErrorCode, isSluiceError } from "../contract/errors.js";
import type { Logger } from "../contract/logger.js";
import {
  type AssignmentEntry,
  parseShardKey,
  type RuleCounts,
  type SinkTrouble,
  type StageWait,
} from "../contract/ownership.js";
import type { AssignmentStore, CoordinatorControlBus, JsonStore, Scheduler } from "../contract/ports.js";
import {
  type CoordinatorCommand,
  type CoordinatorEvent,
  type CoordinatorState,
  coordinatorStep,
  grantsFor,
  initialCoordinatorState,
} from "../core/coordinator-core.js";
import {
  isLeader,
  type LeaderObservation,
  type LeaderRecord,
  leaderAction,
} from "../core/leader-election.js";
import { TelemetryAttributes as A, SpanNames } from "../telemetry/attributes.js";
import { getTracer, inSpan, recordFailure } from "../telemetry/tracing.js";

/** How an assignment write ended: accepted, lost a compare-and-set race, or failed. */
export type WriteResult = "ok" | "conflict" | "failed";

/** What the leader publishes for `sluice status` and dashboards. */
export interface ClusterView {
  leader: string;
  term: number;
  at: number;
  members: Record<
    string,
    {
      capacity: number;
      lastSeenMsAgo: number;
      leaving: boolean;
      heartbeatDelayMs: number;
      held: number;
      /** Shards whose commits keep failing on this member: the sink is unavailable to them. */
      sinkTrouble?: Record<string, SinkTrouble>;
      /** Shards waiting on this member for a stage's input. */
      waiting?: Record<string, StageWait>;
      /** Quality rules' counts on this member, `pipeline.rule` -> counts. */
      rules?: Record<string, RuleCounts>;
    }
  >;
}

export type CoordinatorRecord = LeaderRecord | ClusterView;

export interface CoordinatorDeps {
  id: string;
  shards: readonly string[];
  assignments: AssignmentStore;
  /** Key `leader` holds the lease, key `view` the leader's ClusterView. */
  control: JsonStore<CoordinatorRecord>;
  bus: CoordinatorControlBus;
  scheduler: Scheduler;
  timing: TimingConfig;
  log: Logger;
  /** How often the core is ticked, ms. */
  tickMs?: number;
  onCommand?(c: CoordinatorCommand, leaderTerm: number): void;
  onLeadership?(leader: boolean, term: number): void;
  /** An assignment write finished (metrics). */
  onWrite?(c: Extract<CoordinatorCommand, { type: "write" }>, result: WriteResult): void;
  /** A worker's heartbeat arrived; `delayMs` is the core's receive time minus its send time. */
  onHeartbeat?(worker: string, delayMs: number): void;
}

export const LEADER_KEY = "leader";
export const VIEW_KEY = "view";

export class CoordinatorRuntime {
  readonly state: CoordinatorState;
  private obs: LeaderObservation = { record: null, revision: 0, observedAt: 0 };
  private leading = false;
  private timer: unknown = null;
  private stops: Array<() => void> = [];
  private electing = false;
  private lastViewAt = 0;
  /** When the last tick ran (0: none yet), to tell a pause of this process from timer jitter. */
  private lastTickAt = 0;
  private started = false;
  private stopped = false;

  constructor(private readonly d: CoordinatorDeps) {
    this.state = initialCoordinatorState(d.shards);
  }

  get isLeader(): boolean {
    return this.leading;
  }

  get term(): number {
    return this.obs.record?.term ?? 0;
  }

  private get coreTiming() {
    return {
      failureTimeoutMs: this.d.timing.failureTimeoutMs,
      handoffTimeoutMs: this.d.timing.handoffTimeoutMs,
      writeTimeoutMs: 2_000,
      stuckMs: Math.max(2_000, 10 * this.d.timing.heartbeatMs),
      prepareTimeoutMs: this.d.timing.prepareTimeoutMs,
    };
  }

  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    const now = () => this.d.scheduler.now();
    const w1 = await this.d.assignments.watch((shard, v) =>
      this.dispatch({ type: "entry", shard, entry: v.value, revision: v.revision, now: now() }),
    );
    const w2 = await this.d.control.watch((key, v) => {
      if (key !== LEADER_KEY) return;
      if (v.revision !== this.obs.revision) {
        this.obs = {
          record: (v.value as LeaderRecord | null) ?? null,
          revision: v.revision,
          observedAt: now(),
        };
      }
    });
    this.stops.push(
      () => w1.stop(),
      () => w2.stop(),
    );
    this.d.bus.onHeartbeat((hb, reply) => {
      this.dispatch({ type: "heartbeat", hb, now: now() });
      const member = this.state.members[hb.worker];
      if (member) this.d.onHeartbeat?.(hb.worker, member.delayMs);
      // Leadership is judged now, not at the last tick: after a pause the cached flag is stale.
      if (this.leading && isLeader(this.obs, this.d.id, now(), { ttlMs: this.d.timing.leaderTtlMs })) {
        reply({ leader: this.d.id, term: this.term, grants: grantsFor(this.state, hb.worker) });
      }
    });
    this.d.bus.onReleased((n) =>
      this.dispatch({
        type: "released",
        worker: n.worker,
        shard: n.shard,
        epoch: n.epoch,
        ...(n.fencedBy === undefined ? {} : { fencedBy: n.fencedBy }),
        now: now(),
      }),
    );
    this.tick();
  }

  private tick(): void {
    if (this.stopped) return;
    const now = this.d.scheduler.now();
    const tickMs = this.d.tickMs ?? 50;
    // A tick later than half a heartbeat interval: this process was paused (a stalled event
    // loop on a CPU-starved machine, a stopped process), and heartbeats sent meanwhile wait
    // unread behind this timer. Silence during the pause does not count (`pausedMs`).
    const late = this.lastTickAt === 0 ? 0 : now - this.lastTickAt - tickMs;
    this.lastTickAt = now;
    void this.elect(now);
    const leader = isLeader(this.obs, this.d.id, now, { ttlMs: this.d.timing.leaderTtlMs });
    if (leader !== this.leading) {
      this.leading = leader;
      this.d.log.info({ leader, term: this.term }, leader ? "became leader" : "lost leadership");
      this.d.onLeadership?.(leader, this.term);
      this.dispatch({ type: "leadership", leader, now });
    } else if (late > this.d.timing.heartbeatMs / 2) {
      const msg = "coordinator paused: members' silence meanwhile not counted";
      if (late >= this.d.timing.failureTimeoutMs / 2) this.d.log.warn({ pausedMs: late }, msg);
      else this.d.log.debug({ pausedMs: late }, msg);
      this.dispatch({ type: "tick", now, pausedMs: late });
    } else {
      this.dispatch({ type: "tick", now });
    }
    if (this.leading && now - this.lastViewAt >= 500) {
      this.lastViewAt = now;
      void this.d.control.put(VIEW_KEY, this.view(now)).catch(() => undefined);
    }
    this.timer = this.d.scheduler.setTimeout(() => this.tick(), tickMs);
  }

  private async elect(now: number): Promise<void> {
    if (this.electing) return;
    const action = leaderAction(this.obs, this.d.id, now, { ttlMs: this.d.timing.leaderTtlMs });
    if (action.type === "wait") return;
    this.electing = true;
    const known = this.obs.revision;
    try {
      const rev =
        action.type === "create"
          ? await this.d.control.compareAndSet(LEADER_KEY, action.record, 0)
          : await this.d.control.compareAndSet(LEADER_KEY, action.record, action.expectedRevision);
      if (rev > this.obs.revision) this.obs = { record: action.record, revision: rev, observedAt: now };
      if (action.type !== "renew")
        this.d.log.info({ term: action.record.term }, `leader lease: ${action.type}`);
    } catch {
      // Lost the race, or the revision this coordinator knows is not the entry's: after a NATS
      // node failure a watch can have shown a write the KV then lost (or stopped delivering),
      // and every compare-and-set against that revision would fail for good, leaving the
      // cluster without a leader. So the entry is read back, and a revision other than the
      // known one is taken as a new observation (the takeover clock starts again from it).
      try {
        const v = await this.d.control.get(LEADER_KEY);
        // Unless the watch brought something newer meanwhile.
        if (this.obs.revision === known && v.revision !== known) {
          this.obs = {
            record: (v.value as LeaderRecord | null) ?? null,
            revision: v.revision,
            observedAt: this.d.scheduler.now(),
          };
        }
      } catch {
        // The KV is unavailable: the next tick tries again.
      }
    } finally {
      this.electing = false;
    }
  }

  private dispatch(event: CoordinatorEvent): void {
    const { commands } = coordinatorStep(this.state, event, this.coreTiming);
    for (const c of commands) this.execute(c);
  }

  private execute(c: CoordinatorCommand): void {
    this.d.onCommand?.(c, this.term);
    switch (c.type) {
      case "write": {
        const ref = parseShardKey(c.shard);
        // One trace per write: a rebalance's revoke, a hand-off's next owner, a failure move.
        const span = getTracer().startSpan(
          SpanNames.assignmentWrite,
          {
            kind: SpanKind.CLIENT,
            attributes: {
              [A.handoffReason]: c.reason,
              ...(ref ? { [A.pipeline]: ref.pipeline, [A.shard]: ref.shard } : {}),
              [A.epoch]: c.entry.epoch,
              [A.owner]: c.entry.owner ?? "",
              [A.phase]: c.entry.phase,
              ...(c.entry.next ? { [A.next]: c.entry.next } : {}),
              [A.nodeId]: this.d.id,
            },
          },
          ROOT_CONTEXT,
        );
        const done = (result: WriteResult, err?: unknown): void => {
          span.setAttribute(A.writeResult, result);
          if (err !== undefined) recordFailure(span, err);
          span.end();
          try {
            this.d.onWrite?.(c, result);
          } catch {
            // A metrics hook must never break the write path.
          }
        };
        inSpan(span, () =>
          this.d.log.info(
            {
              shard: c.shard,
              owner: c.entry.owner,
              epoch: c.entry.epoch,
              phase: c.entry.phase,
              reason: c.reason,
            },
            "assign",
          ),
        );
        void this.d.assignments
          .compareAndSet(c.shard, c.entry satisfies AssignmentEntry, c.expectedRevision)
          .then(
            (revision) => {
              done("ok");
              // Workers hear it sooner than through their watch (`WorkerControlBus.onAssigned`).
              this.d.bus.assigned?.({ shard: c.shard, entry: c.entry, revision });
            },
            async (err: unknown) => {
              // A lost race means this view is stale: re-read the key rather than retry blindly.
              if (isSluiceError(err, ErrorCode.Conflict)) {
                done("conflict", err);
                const v = await this.d.assignments.get(c.shard).catch(() => null);
                if (v) {
                  const now = this.d.scheduler.now();
                  this.dispatch({
                    type: "entry",
                    shard: c.shard,
                    entry: v.value,
                    revision: v.revision,
                    now,
                    reread: true,
                  });
                  return;
                }
              } else {
                done("failed", err);
              }
              this.dispatch({ type: "write-failed", shard: c.shard, now: this.d.scheduler.now() });
            },
          );
        break;
      }
      case "member-joined":
        this.d.log.info({ worker: c.worker }, "member joined");
        break;
      case "member-lost":
        this.d.log.warn({ worker: c.worker, silentMs: c.silentMs }, "member lost");
        break;
    }
  }

  view(now: number): ClusterView {
    const members: ClusterView["members"] = {};
    for (const [id, m] of Object.entries(this.state.members)) {
      members[id] = {
        capacity: m.capacity,
        lastSeenMsAgo: now - m.lastSeen,
        leaving: m.leaving,
        heartbeatDelayMs: m.delayMs,
        held: Object.keys(m.held).length,
        ...(m.sinkTrouble ? { sinkTrouble: m.sinkTrouble } : {}),
        ...(m.waiting ? { waiting: m.waiting } : {}),
        ...(m.rules ? { rules: m.rules } : {}),
      };
    }
    return { leader: this.d.id, term: this.term, at: now, members };
  }

  /** Stop acting; a standby takes over after the leader TTL. Idempotent. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer !== null) this.d.scheduler.clearTimeout(this.timer);
    for (const s of this.stops) s();
    await this.d.bus.close();
  }
}
