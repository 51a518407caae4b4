/**
 * The coordinator's decisions as a deterministic core: it takes events (heartbeats, KV
 * entries, releases, ticks) and returns commands (compare-and-set writes of assignment
 * entries). It never performs IO and never reads a clock: `now` comes with every event.
 *
 * Hand-off rules:
 * - failure (owner missed heartbeats for `failureTimeoutMs`, or the shard has no owner):
 *   assign the target at `epoch + 1` at once; the new owner's sink fence stops the old one.
 * - graceful (owner alive, but the balanced target differs, or the owner is leaving):
 *   mark the entry `revoking`; once the owner reports it released (or `handoffTimeoutMs`
 *   passes, or it dies), assign the target at `epoch + 1`.
 * - prepared (a graceful move to a live target, with `prepareTimeoutMs` set): first name the
 *   target `next` on the still-active entry, and revoke only once the target's heartbeat says
 *   its consumer is open (or `prepareTimeoutMs` passes). The owner commits until then, so
 *   opening a consumer (100-400 ms on a worker that has just joined) is not part of the
 *   shard's pause; the pause is the drain, the release and the grant.
 */

import type {
  AssignmentEntry,
  Heartbeat,
  RuleCounts,
  SinkTrouble,
  StageWait,
} from "../contract/ownership.js";
import { assignShards, type MemberCapacity } from "./assignment.js";

export interface CoordinatorTiming {
  /** A member that sent no heartbeat for this long (ms) is declared dead. */
  failureTimeoutMs: number;
  /** A graceful hand-off not released within this long (ms) is forced. */
  handoffTimeoutMs: number;
  /** A write not echoed back by the KV watch within this long (ms) may be issued again. */
  writeTimeoutMs: number;
  /**
   * A live owner whose heartbeats have not listed an active shard for this long (ms) is not
   * running it (it saw a write the KV then lost, say): the shard is re-asserted at a new
   * epoch. Default 3000.
   */
  stuckMs?: number;
  /**
   * How long a move waits for its target to report the next lease prepared before revoking
   * anyway (ms). Undefined or 0: revoke at once, without a preparation step.
   */
  prepareTimeoutMs?: number;
}

export interface MemberView {
  capacity: number;
  lastSeen: number;
  leaving: boolean;
  held: Record<string, number>;
  /** Shards the member has prepared to take (`Heartbeat.prepared`), key -> epoch. */
  prepared: Record<string, number>;
  /** Heartbeat delay of the latest beat, ms (diagnostics). */
  delayMs: number;
  /** Shards whose commits keep failing on the member (`Heartbeat.sinkTrouble`; diagnostics). */
  sinkTrouble?: Record<string, SinkTrouble>;
  /** `Heartbeat.waiting` (diagnostics). */
  waiting?: Record<string, StageWait>;
  /** `Heartbeat.rules` (diagnostics). */
  rules?: Record<string, RuleCounts>;
}

export interface EntryView {
  entry: AssignmentEntry | null;
  /** KV revision of `entry`; 0 when the key does not exist. */
  revision: number;
}

export interface CoordinatorState {
  readonly shards: readonly string[];
  members: Record<string, MemberView>;
  entries: Record<string, EntryView>;
  /** shard -> time a write was issued and not yet echoed back. */
  pending: Record<string, number>;
  /** shard -> time the coordinator first saw the entry in `revoking`. */
  revokingSince: Record<string, number>;
  /** shard -> time the coordinator first saw the entry active with its current `next`. */
  preparingSince: Record<string, number>;
  /** shard -> epoch the owner reported released. */
  released: Record<string, number>;
  /** shard -> highest epoch the sink is known to be fenced at; new epochs go above it. */
  floor: Record<string, number>;
  /** shard -> time since which its live owner's heartbeats have not listed it. */
  missingSince: Record<string, number>;
  leader: boolean;
}

export type CoordinatorEvent =
  | { type: "heartbeat"; hb: Heartbeat; now: number }
  | {
      type: "entry";
      shard: string;
      entry: AssignmentEntry | null;
      revision: number;
      now: number;
      /**
       * Read from the store after a compare-and-set lost, not seen by the watch: the store's
       * current value, taken even at a lower revision than the view's (a phantom the watch saw
       * can leave the view ahead of the store, and every write against it would lose again).
       */
      reread?: boolean;
    }
  | { type: "released"; worker: string; shard: string; epoch: number; fencedBy?: number; now: number }
  | { type: "write-failed"; shard: string; now: number }
  | { type: "leadership"; leader: boolean; now: number }
  | {
      type: "tick";
      now: number;
      /**
       * How long this coordinator was paused just before this tick (its event loop stalled,
       * or the process was stopped), ms. Heartbeats sent meanwhile are still unread, so
       * members' silence during the pause is not counted against them (the failure detector
       * measures silence in time it was listening).
       */
      pausedMs?: number;
    };

export type CoordinatorCommand =
  | { type: "write"; shard: string; entry: AssignmentEntry; expectedRevision: number; reason: HandoffReason }
  | { type: "member-joined"; worker: string }
  | { type: "member-lost"; worker: string; silentMs: number };

export type HandoffReason =
  | "initial"
  | "failure"
  | "rebalance"
  | "released"
  | "handoff-timeout"
  | "refence"
  | "reassert"
  | "prepare"
  | "move-off";

export function initialCoordinatorState(shards: readonly string[]): CoordinatorState {
  const entries: Record<string, EntryView> = {};
  for (const s of shards) entries[s] = { entry: null, revision: 0 };
  return {
    shards: [...shards],
    members: {},
    entries,
    pending: {},
    revokingSince: {},
    preparingSince: {},
    released: {},
    floor: {},
    missingSince: {},
    leader: false,
  };
}

/** Members alive at `now`. */
export function liveMembers(state: CoordinatorState, now: number, timing: CoordinatorTiming): string[] {
  return Object.keys(state.members).filter(
    (id) => now - state.members[id]!.lastSeen <= timing.failureTimeoutMs,
  );
}

/**
 * Applies one event. Mutates and returns `state` (callers own it exclusively) together with
 * the commands to run. Only a leader issues writes.
 */
export function coordinatorStep(
  state: CoordinatorState,
  event: CoordinatorEvent,
  timing: CoordinatorTiming,
): { state: CoordinatorState; commands: CoordinatorCommand[] } {
  const commands: CoordinatorCommand[] = [];
  switch (event.type) {
    case "heartbeat": {
      const { hb } = event;
      if (!state.members[hb.worker]) commands.push({ type: "member-joined", worker: hb.worker });
      state.members[hb.worker] = {
        capacity: hb.capacity > 0 ? hb.capacity : 1,
        lastSeen: event.now,
        leaving: hb.leaving,
        held: hb.held,
        prepared: hb.prepared ?? {},
        delayMs: Math.max(0, event.now - hb.sentAt),
        ...(hb.sinkTrouble ? { sinkTrouble: hb.sinkTrouble } : {}),
        ...(hb.waiting ? { waiting: hb.waiting } : {}),
        ...(hb.rules ? { rules: hb.rules } : {}),
      };
      for (const s of state.shards) {
        const e = state.entries[s]?.entry;
        if (!e || e.owner !== hb.worker || e.phase !== "active" || state.pending[s] !== undefined) continue;
        if (hb.held[s] === e.epoch) delete state.missingSince[s];
        else state.missingSince[s] ??= event.now;
      }
      break;
    }
    case "entry": {
      if (!(event.shard in state.entries)) break;
      const prev = state.entries[event.shard]!;
      if (event.revision < prev.revision && !event.reread) break;
      state.entries[event.shard] = { entry: event.entry, revision: event.revision };
      delete state.pending[event.shard];
      delete state.missingSince[event.shard];
      if (event.entry?.phase === "revoking") {
        if (prev.entry?.phase !== "revoking" || prev.entry.epoch !== event.entry.epoch) {
          state.revokingSince[event.shard] = event.now;
        }
      } else {
        delete state.revokingSince[event.shard];
      }
      const e = event.entry;
      if (e?.phase === "active" && e.next) {
        const p = prev.entry;
        if (p?.phase !== "active" || p.next !== e.next || p.epoch !== e.epoch) {
          state.preparingSince[event.shard] = event.now;
        }
      } else {
        delete state.preparingSince[event.shard];
      }
      break;
    }
    case "released": {
      const cur = state.entries[event.shard]?.entry;
      if (event.fencedBy !== undefined && event.shard in state.entries) {
        state.floor[event.shard] = Math.max(state.floor[event.shard] ?? 0, event.fencedBy);
      }
      if (cur && cur.owner === event.worker && cur.epoch === event.epoch) {
        state.released[event.shard] = event.epoch;
      }
      break;
    }
    case "write-failed":
      delete state.pending[event.shard];
      break;
    case "leadership":
      state.leader = event.leader;
      state.pending = {};
      if (event.leader) {
        // A new leader restarts every hand-off clock: it cannot know when the old leader began.
        for (const s of state.shards) {
          const e = state.entries[s]?.entry;
          if (e?.phase === "revoking") state.revokingSince[s] = event.now;
          if (e?.phase === "active" && e.next) state.preparingSince[s] = event.now;
        }
      }
      break;
    case "tick":
      if (event.pausedMs !== undefined && event.pausedMs > 0) {
        for (const m of Object.values(state.members))
          m.lastSeen = Math.min(event.now, m.lastSeen + event.pausedMs);
      }
      break;
  }
  if (state.leader) commands.push(...plan(state, event.now, timing));
  return { state, commands };
}

function plan(state: CoordinatorState, now: number, timing: CoordinatorTiming): CoordinatorCommand[] {
  const commands: CoordinatorCommand[] = [];
  const alive = new Set(liveMembers(state, now, timing));
  for (const id of Object.keys(state.members)) {
    if (!alive.has(id)) {
      commands.push({ type: "member-lost", worker: id, silentMs: now - state.members[id]!.lastSeen });
      delete state.members[id];
    }
  }
  const eligible: MemberCapacity[] = [...alive]
    .filter((id) => !state.members[id]!.leaving)
    .map((id) => ({ id, capacity: state.members[id]!.capacity }));
  // Stickiness is judged against where shards are headed: the owner, or the target of a
  // hand-off already under way, so a revoke is not reversed by the next plan.
  const current = new Map<string, string | null>();
  for (const s of state.shards) {
    const e = state.entries[s]?.entry;
    current.set(s, e ? (e.phase === "revoking" ? (e.next ?? null) : e.owner) : null);
  }
  const target = assignShards(state.shards, eligible, current);

  for (const s of state.shards) {
    const pendingAt = state.pending[s];
    if (pendingAt !== undefined && now - pendingAt < timing.writeTimeoutMs) continue;
    const view = state.entries[s]!;
    const e = view.entry;
    const want = target.get(s) ?? null;
    // The next epoch is above both the entry's and any fence the sink reported.
    const next = Math.max(e?.epoch ?? 0, state.floor[s] ?? 0) + 1;
    const write = (entry: AssignmentEntry, reason: HandoffReason): void => {
      state.pending[s] = now;
      commands.push({ type: "write", shard: s, entry, expectedRevision: view.revision, reason });
    };
    if (!e || e.owner === null) {
      if (want !== null) {
        write({ owner: want, epoch: next, phase: "active", at: now }, "initial");
      }
      continue;
    }
    const ownerAlive = alive.has(e.owner);
    if (!ownerAlive) {
      // Failure hand-off: no waiting; the next epoch fences the old owner in the sink.
      if (want !== null) write({ owner: want, epoch: next, phase: "active", at: now }, "failure");
      else write({ owner: null, epoch: e.epoch, phase: "active", at: now }, "failure");
      continue;
    }
    if ((state.floor[s] ?? 0) >= e.epoch) {
      // The sink is fenced at or above this epoch: its owner cannot commit; move past it.
      delete state.released[s];
      if (want !== null) write({ owner: want, epoch: next, phase: "active", at: now }, "refence");
      continue;
    }
    const missing = state.missingSince[s];
    if (e.phase === "active" && missing !== undefined && now - missing >= (timing.stuckMs ?? 3_000)) {
      // Alive, but not running the shard it owns: hand it out again at a new epoch.
      delete state.missingSince[s];
      write({ owner: want ?? e.owner, epoch: next, phase: "active", at: now }, "reassert");
      continue;
    }
    if (e.phase === "active") {
      // A leaving owner is revoked even when no one can take over, so it can drain and exit.
      const leaving = state.members[e.owner]?.leaving === true;
      if (want === e.owner || (want === null && !leaving)) {
        // No move (any more): a target named to prepare lets its preparation go.
        if (e.next) write({ owner: e.owner, epoch: e.epoch, phase: "active", at: now }, "move-off");
        continue;
      }
      const prepareMs = timing.prepareTimeoutMs ?? 0;
      // A leaving owner is not kept waiting: it wants to exit.
      if (prepareMs > 0 && want !== null && !leaving) {
        if (e.next !== want) {
          write({ owner: e.owner, epoch: e.epoch, phase: "active", next: want, at: now }, "prepare");
          continue;
        }
        const ready = state.members[want]?.prepared[s] === e.epoch + 1;
        if (!ready && now - (state.preparingSince[s] ?? now) < prepareMs) continue;
      }
      write({ owner: e.owner, epoch: e.epoch, phase: "revoking", next: want, at: now }, "rebalance");
      continue;
    }
    // revoking: wait for the owner's release, or force after the hand-off timeout.
    const releasedAt = state.released[s];
    const since = state.revokingSince[s] ?? now;
    const released = releasedAt === e.epoch;
    const timedOut = now - since >= timing.handoffTimeoutMs;
    if (released || timedOut) {
      delete state.released[s];
      const reason = released ? "released" : "handoff-timeout";
      if (want !== null) write({ owner: want, epoch: next, phase: "active", at: now }, reason);
      else write({ owner: null, epoch: e.epoch, phase: "active", at: now }, reason);
    }
  }
  return commands;
}

/**
 * The epochs a worker may hold right now according to this coordinator: shard -> epoch.
 * A shard with a write in flight is left out: the write may already have moved it, and a
 * grant promises that it has not.
 */
export function grantsFor(state: CoordinatorState, worker: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const s of state.shards) {
    const e = state.entries[s]?.entry;
    if (e && e.owner === worker && state.pending[s] === undefined) out[s] = e.epoch;
  }
  return out;
}
