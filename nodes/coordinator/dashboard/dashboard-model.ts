/**
 * What the dashboard shows, computed without IO: the coordinator's poller feeds it one
 * observation a second (its own view of members and assignments, the leader record, the
 * shards' consumers and checkpoints) and the runtime's commands as they happen; it keeps the
 * current state, a few minutes of throughput and lag, and a log of cluster events.
 *
 * Every coordinator serves a dashboard, but only the leader issues commands. So events are
 * derived from both sources and de-duplicated: a standby learns of a lost member from its
 * heartbeat age and of a move from the assignment entry itself (reason "observed"), while the
 * leader reports them at once, with the reason of the write.
 */

import { consumerLag, type ShardConsumerInfo } from "../../../shared/adapters/nats/shard-consumers.js";
import type { SluiceConfig } from "../../../shared/contract/config.js";
import { type AssignmentEntry, parseShardKey } from "../../../shared/contract/ownership.js";
import type { Checkpoint, LateRecord } from "../../../shared/contract/ports.js";
import { epochConsumer } from "../../../shared/contract/wire.js";
import type { CoordinatorCommand, MemberView } from "../../../shared/core/coordinator-core.js";
import type { LeaderRecord } from "../../../shared/core/leader-election.js";
import { type MergeStatus, mergeStatus } from "../../../shared/core/merge-convergence.js";
import { type ProgressSample, type ShardRates, shardRates } from "../../../shared/core/shard-rates.js";
import { type SinkHealth, sinkHealth } from "../../../shared/core/sink-health.js";
import { type StageHealth, stageHealth } from "../../../shared/core/stage-health.js";

export type MemberStatus = "alive" | "leaving" | "lost";

export interface DashboardMember {
  id: string;
  status: MemberStatus;
  capacity: number | null;
  /** Shards whose assignment names this member as owner. */
  shards: number;
  /** Shards the member's latest heartbeat says it holds; null once lost. */
  held: number | null;
  lastHeartbeatMsAgo: number | null;
  heartbeatDelayMs: number | null;
  /** Wall-clock ms when it was declared lost. */
  lostAt: number | null;
}

export interface DashboardShard {
  shard: string;
  pipeline: string;
  index: number;
  owner: string | null;
  epoch: number;
  phase: "active" | "revoking" | "unassigned";
  /** Target of a graceful hand-off under way. */
  next: string | null;
  /** Last committed source sequence (the sink's checkpoint, else the consumer's ack floor). */
  committed: number | null;
  /** Epoch the sink is fenced at for this shard. */
  fencedEpoch: number | null;
  /** Records of the shard not yet delivered or not yet acked by the owner's consumer. */
  lag: number | null;
  /** Records/s committed over the last interval. */
  rate: number | null;
}

export interface DashboardState {
  /** Wall-clock ms of the observation. */
  at: number;
  /** The coordinator serving this dashboard. */
  coordinator: string;
  isLeader: boolean;
  leader: LeaderRecord | null;
  members: DashboardMember[];
  shards: DashboardShard[];
  totals: { rate: number | null; lag: number | null; owned: number; shards: number };
  /** Whether the sink answers, and the shards that cannot commit (their circuit breakers). */
  sink: SinkHealth;
  /** Shards waiting for a stage's input, and the quality rules' counts. */
  stages: StageHealth;
  /**
   * Each merge's convergence watermark and its branches' watermarks, lags and pending late
   * records, from this observation's checkpoints (`rows` is not read here: null).
   */
  merges: MergeStatus[];
}

export interface HistoryPoint {
  at: number;
  rate: number | null;
  lag: number | null;
}

export type DashboardEventType = "member-joined" | "member-lost" | "assignment" | "leader";

export interface DashboardEvent {
  id: number;
  at: number;
  type: DashboardEventType;
  text: string;
  worker?: string;
  shard?: string;
  owner?: string | null;
  epoch?: number;
  phase?: string;
  /** The coordinator core's reason for an assignment write, or "observed" when only seen in the KV. */
  reason?: string;
}

export interface Observation {
  at: number;
  /** Undefined when the leader record could not be read: the last one is kept. */
  leader: LeaderRecord | null | undefined;
  members: Record<string, MemberView>;
  entries: Record<string, AssignmentEntry | null>;
  /** Pipeline -> its consumers by name; null when JetStream could not be asked. */
  consumers: Map<string, Map<string, ShardConsumerInfo>> | null;
  /** Shard key -> the sink's checkpoint; null when the sink did not answer. */
  checkpoints: Record<string, Checkpoint | null>;
  /** Why the sink's read side did not answer this observation; null when it did. */
  sinkError: string | null;
  /** Merge branch -> its late records; null or absent when they were not read. */
  late?: ReadonlyMap<string, readonly LateRecord[]> | null;
}

export interface DashboardModelOptions {
  self: string;
  shards: readonly string[];
  failureTimeoutMs: number;
  /** The pipelines and merges, for the merges' convergence (none without). */
  config?: Pick<SluiceConfig, "pipelines" | "merges">;
  /** Points of throughput and lag kept (one per observation). Default 300 (5 min at 1/s). */
  historyLimit?: number;
  /** Events kept for newly opened pages. Default 200. */
  eventLimit?: number;
  /** How long a lost member stays listed, ms. Default 5 min. */
  lostRetentionMs?: number;
  onEvent?: (e: DashboardEvent) => void;
}

const entryKey = (owner: string | null, epoch: number, phase: string): string => `${owner}|${epoch}|${phase}`;

export class DashboardModel {
  private readonly alive = new Set<string>();
  private readonly lost = new Map<string, number>();
  /** Shard -> the entry the last observation saw. */
  private readonly observedKeys = new Map<string, string>();
  /** Shard -> the entries this coordinator wrote lately (already reported with their reason). */
  private readonly commandedKeys = new Map<string, string[]>();
  private entriesSeen = false;
  private leaderKey: string | null = null;
  private leaderRecord: LeaderRecord | null = null;
  private leading = false;
  private prevProgress: ProgressSample | null = null;
  private nextId = 1;
  private readonly events: DashboardEvent[] = [];
  private readonly points: HistoryPoint[] = [];
  private current: DashboardState | null = null;

  constructor(private readonly o: DashboardModelOptions) {}

  get state(): DashboardState | null {
    return this.current;
  }

  history(): HistoryPoint[] {
    return [...this.points];
  }

  recentEvents(): DashboardEvent[] {
    return [...this.events];
  }

  /** A command of the coordinator runtime (only a leader issues writes and member-lost). */
  command(c: CoordinatorCommand, at: number): void {
    switch (c.type) {
      case "member-joined":
        this.markAlive(c.worker, at);
        break;
      case "member-lost":
        this.markLost(c.worker, at, c.silentMs);
        break;
      case "write": {
        const e = c.entry;
        // A few, not one: the next write (a revoke's hand-over) may be issued before the
        // observation has caught up with the previous one.
        const recent = this.commandedKeys.get(c.shard) ?? [];
        recent.push(entryKey(e.owner, e.epoch, e.phase));
        this.commandedKeys.set(c.shard, recent.slice(-4));
        this.emitAssignment(c.shard, e, c.reason, at);
        break;
      }
    }
  }

  /** This coordinator won or lost the leader lease. */
  leadership(leader: boolean, term: number, at: number): void {
    this.leading = leader;
    // Losing it says nothing about who won: the next observation of the record does.
    if (leader) this.observeLeader({ holder: this.o.self, term }, at);
  }

  observe(o: Observation): { state: DashboardState; point: HistoryPoint } {
    if (o.leader !== undefined) this.observeLeader(o.leader, o.at);

    for (const [id, m] of Object.entries(o.members)) {
      if (o.at - m.lastSeen <= this.o.failureTimeoutMs) this.markAlive(id, o.at);
      else this.markLost(id, o.at, o.at - m.lastSeen);
    }
    // The leader forgets a lost member at once; a standby keeps it with an old heartbeat.
    for (const id of [...this.alive]) if (!o.members[id]) this.markLost(id, o.at, null);

    for (const shard of this.o.shards) {
      const e = o.entries[shard] ?? null;
      const key = e ? entryKey(e.owner, e.epoch, e.phase) : entryKey(null, 0, "unassigned");
      if (this.observedKeys.get(shard) === key) continue;
      this.observedKeys.set(shard, key);
      // The first observation is the starting point, not a change; a write of this coordinator
      // was reported when it was issued.
      if (this.entriesSeen && e && !this.commandedKeys.get(shard)?.includes(key)) {
        this.emitAssignment(shard, e, "observed", o.at);
      }
    }
    this.entriesSeen = true;

    const progress: ProgressSample | null = o.consumers ? { at: o.at, shards: {} } : null;
    const shards: DashboardShard[] = this.o.shards.map((shard) => {
      const ref = parseShardKey(shard);
      const e = o.entries[shard] ?? null;
      const owner = e?.owner ?? null;
      const found =
        ref && e && owner
          ? epochConsumer(o.consumers?.get(ref.pipeline), ref.pipeline, ref.shard, e.epoch)
          : undefined;
      const name = found?.name ?? null;
      const ci = found?.value;
      if (progress)
        progress.shards[shard] = name && ci ? { counter: name, count: ci.ackFloorConsumerSeq } : null;
      const cp = o.checkpoints[shard] ?? null;
      return {
        shard,
        pipeline: ref?.pipeline ?? shard,
        index: ref?.shard ?? 0,
        owner,
        epoch: e?.epoch ?? 0,
        phase: owner ? (e?.phase ?? "active") : "unassigned",
        next: e?.next ?? null,
        committed: cp?.seq ?? ci?.ackFloorStreamSeq ?? null,
        fencedEpoch: cp?.epoch ?? null,
        lag: ci ? consumerLag(ci) : null,
        rate: null,
      };
    });
    // Without this round's consumers the rates are unknown; the earlier sample stays the base.
    let rates: ShardRates | null = null;
    if (progress) {
      rates = this.prevProgress ? shardRates(this.prevProgress, progress) : null;
      this.prevProgress = progress;
    }
    for (const s of shards) s.rate = rates?.perShard[s.shard] ?? null;

    const lags = shards.filter((s) => s.lag !== null);
    const state: DashboardState = {
      at: o.at,
      coordinator: this.o.self,
      isLeader: this.leading,
      leader: this.leaderRecord,
      members: this.members(o),
      shards,
      totals: {
        rate: rates ? rates.total : null,
        lag: lags.length > 0 ? lags.reduce((n, s) => n + (s.lag ?? 0), 0) : null,
        owned: shards.filter((s) => s.owner !== null).length,
        shards: shards.length,
      },
      sink: sinkHealth(o.members, o.sinkError, o.at),
      stages: stageHealth(o.members, o.at),
      merges: this.merges(o),
    };
    const point: HistoryPoint = { at: o.at, rate: state.totals.rate, lag: state.totals.lag };
    this.points.push(point);
    if (this.points.length > (this.o.historyLimit ?? 300)) this.points.shift();
    this.current = state;
    return { state, point };
  }

  private merges(o: Observation): MergeStatus[] {
    const cfg = this.o.config;
    if (!cfg) return [];
    const checkpoint = (pipeline: string, shard: number): Checkpoint | null | undefined =>
      o.checkpoints[`${pipeline}.${shard}`];
    return cfg.merges.map((m) => mergeStatus(cfg, m, checkpoint, null, o.late ?? null));
  }

  private members(o: Observation): DashboardMember[] {
    const retention = this.o.lostRetentionMs ?? 300_000;
    for (const [id, at] of this.lost) if (o.at - at > retention) this.lost.delete(id);
    const owned = new Map<string, number>();
    for (const e of Object.values(o.entries)) {
      if (e?.owner) owned.set(e.owner, (owned.get(e.owner) ?? 0) + 1);
    }
    const ids = new Set([...this.alive, ...this.lost.keys()]);
    return [...ids].sort(compareIds).map((id) => {
      const m = o.members[id];
      const lostAt = this.lost.get(id) ?? null;
      return {
        id,
        status: lostAt !== null ? "lost" : m?.leaving ? "leaving" : "alive",
        capacity: m?.capacity ?? null,
        shards: owned.get(id) ?? 0,
        held: lostAt === null && m ? Object.keys(m.held).length : null,
        lastHeartbeatMsAgo: m ? Math.max(0, o.at - m.lastSeen) : null,
        heartbeatDelayMs: m?.delayMs ?? null,
        lostAt,
      } satisfies DashboardMember;
    });
  }

  private observeLeader(r: LeaderRecord | null, at: number): void {
    const key = r ? `${r.holder}|${r.term}` : "none";
    if (key === this.leaderKey) return;
    const was = this.leaderRecord;
    this.leaderKey = key;
    this.leaderRecord = r;
    const text = r
      ? `${r.holder} is leader (term ${r.term})${was && was.holder !== r.holder ? `, was ${was.holder}` : ""}`
      : "no leader";
    this.emit({ at, type: "leader", text, ...(r ? { worker: r.holder } : {}) });
  }

  private markAlive(id: string, at: number): void {
    if (this.alive.has(id)) return;
    this.alive.add(id);
    const wasLost = this.lost.delete(id);
    this.emit({ at, type: "member-joined", worker: id, text: `${id} ${wasLost ? "rejoined" : "joined"}` });
  }

  private markLost(id: string, at: number, silentMs: number | null): void {
    if (!this.alive.has(id)) return;
    this.alive.delete(id);
    this.lost.set(id, at);
    const why = silentMs === null ? "" : `: no heartbeat for ${silentMs} ms`;
    this.emit({ at, type: "member-lost", worker: id, text: `${id} lost${why}` });
  }

  private emitAssignment(shard: string, e: AssignmentEntry, reason: string, at: number): void {
    const text =
      e.phase === "revoking"
        ? `${shard}: revoking from ${e.owner} at epoch ${e.epoch}${e.next ? ` for ${e.next}` : ""} (${reason})`
        : e.owner && e.next
          ? `${shard}: ${e.next} preparing to take over from ${e.owner} at epoch ${e.epoch} (${reason})`
          : e.owner
            ? `${shard} → ${e.owner} at epoch ${e.epoch} (${reason})`
            : `${shard} unassigned at epoch ${e.epoch} (${reason})`;
    this.emit({
      at,
      type: "assignment",
      shard,
      owner: e.owner,
      epoch: e.epoch,
      phase: e.phase,
      reason,
      text,
      ...(e.owner ? { worker: e.owner } : {}),
    });
  }

  private emit(e: Omit<DashboardEvent, "id">): void {
    const ev: DashboardEvent = { id: this.nextId++, ...e };
    this.events.push(ev);
    if (this.events.length > (this.o.eventLimit ?? 200)) this.events.shift();
    this.o.onEvent?.(ev);
  }
}

/** w2 before w10: ids compared by their text, then by their trailing number. */
function compareIds(a: string, b: string): number {
  const ra = /^(.*?)(\d+)$/.exec(a);
  const rb = /^(.*?)(\d+)$/.exec(b);
  if (ra && rb && ra[1] === rb[1]) return Number(ra[2]) - Number(rb[2]);
  return a.localeCompare(b);
}
