import fc from "fast-check";
import { describe, expect, it } from "vitest";
import type { AssignmentEntry } from "../../shared/contract/ownership.js";
import {
  type CoordinatorCommand,
  type CoordinatorState,
  type CoordinatorTiming,
  coordinatorStep,
  grantsFor,
  initialCoordinatorState,
  liveMembers,
} from "../../shared/core/coordinator-core.js";

const T: CoordinatorTiming = { failureTimeoutMs: 1000, handoffTimeoutMs: 5000, writeTimeoutMs: 500 };

type Write = Extract<CoordinatorCommand, { type: "write" }>;
const isWrite = (c: CoordinatorCommand): c is Write => c.type === "write";
const writesOf = (cs: CoordinatorCommand[]): Write[] => cs.filter(isWrite);

const shardsN = (n: number): string[] => Array.from({ length: n }, (_, i) => `demo.${i}`);

/**
 * Drives the pure core like the runtime does: write commands go to an in-memory KV with
 * compare-and-set (revisions are global, like a JetStream KV), accepted writes are echoed
 * back as `entry` events, rejected ones as `write-failed`. Every accepted write is checked
 * against the fencing invariants.
 */
class Sim {
  state: CoordinatorState;
  now = 0;
  private rev = 0;
  readonly kv = new Map<string, { entry: AssignmentEntry; revision: number }>();
  /** Writes issued and not yet delivered to the KV, oldest first. */
  inflight: Write[] = [];
  readonly accepted: Write[] = [];
  /** `${shard}@${epoch}` -> the only non-null owner ever written at that epoch. */
  private readonly epochOwner = new Map<string, string>();

  constructor(
    readonly shards: string[],
    readonly timing: CoordinatorTiming = T,
  ) {
    this.state = initialCoordinatorState(shards);
  }

  at(now: number): this {
    expect(now).toBeGreaterThanOrEqual(this.now);
    this.now = now;
    return this;
  }

  private run(ev: Parameters<typeof coordinatorStep>[1]): CoordinatorCommand[] {
    const { state, commands } = coordinatorStep(this.state, ev, this.timing);
    this.state = state;
    for (const c of commands) if (isWrite(c)) this.inflight.push(c);
    return commands;
  }

  /** A healthy worker's heartbeat: it holds every shard the KV gives it (`held` overrides). */
  beat(
    worker: string,
    opts: {
      leaving?: boolean;
      capacity?: number;
      held?: Record<string, number>;
      prepared?: Record<string, number>;
    } = {},
  ): CoordinatorCommand[] {
    const held: Record<string, number> = {};
    for (const [shard, v] of this.kv) if (v.entry.owner === worker) held[shard] = v.entry.epoch;
    return this.run({
      type: "heartbeat",
      hb: {
        worker,
        capacity: opts.capacity ?? 1,
        held: opts.held ?? held,
        ...(opts.prepared ? { prepared: opts.prepared } : {}),
        leaving: opts.leaving ?? false,
        sentAt: this.now,
      },
      now: this.now,
    });
  }

  lead(leader: boolean): CoordinatorCommand[] {
    return this.run({ type: "leadership", leader, now: this.now });
  }

  tick(pausedMs?: number): CoordinatorCommand[] {
    return this.run(
      pausedMs === undefined ? { type: "tick", now: this.now } : { type: "tick", now: this.now, pausedMs },
    );
  }

  release(worker: string, shard: string, epoch: number): CoordinatorCommand[] {
    return this.run({ type: "released", worker, shard, epoch, now: this.now });
  }

  writeFailed(shard: string): CoordinatorCommand[] {
    return this.run({ type: "write-failed", shard, now: this.now });
  }

  entry(shard: string, entry: AssignmentEntry | null, revision: number): CoordinatorCommand[] {
    return this.run({ type: "entry", shard, entry, revision, now: this.now });
  }

  /** Delivers one in-flight write to the KV (CAS) and feeds the outcome back. */
  deliver(w: Write): CoordinatorCommand[] {
    const i = this.inflight.indexOf(w);
    expect(i).toBeGreaterThanOrEqual(0);
    this.inflight.splice(i, 1);
    const cur = this.kv.get(w.shard);
    if ((cur?.revision ?? 0) !== w.expectedRevision) return this.writeFailed(w.shard);
    this.checkInvariants(w.shard, cur?.entry ?? null, w.entry);
    const revision = ++this.rev;
    this.kv.set(w.shard, { entry: w.entry, revision });
    this.accepted.push(w);
    return this.entry(w.shard, w.entry, revision);
  }

  /** Loses one in-flight write: never applied, never echoed. */
  drop(w: Write): void {
    this.inflight.splice(this.inflight.indexOf(w), 1);
  }

  /** Delivers writes (including the ones their echoes cause) until none is in flight. */
  deliverAll(): CoordinatorCommand[] {
    const out: CoordinatorCommand[] = [];
    for (let guard = 0; this.inflight.length > 0; guard++) {
      expect(guard).toBeLessThan(10_000);
      out.push(...this.deliver(this.inflight[0]!));
    }
    return out;
  }

  /** Moves time forward in steps, with the given workers heart-beating at every step. */
  advanceBeating(to: number, workers: string[], stepMs = 250): CoordinatorCommand[] {
    const out: CoordinatorCommand[] = [];
    while (this.now < to) {
      this.at(Math.min(to, this.now + stepMs));
      for (const w of workers) out.push(...this.beat(w));
    }
    return out;
  }

  owners(): Map<string, string | null> {
    const m = new Map<string, string | null>();
    for (const s of this.shards) m.set(s, this.kv.get(s)?.entry.owner ?? null);
    return m;
  }

  counts(): Map<string, number> {
    const c = new Map<string, number>();
    for (const o of this.owners().values()) if (o) c.set(o, (c.get(o) ?? 0) + 1);
    return c;
  }

  private checkInvariants(shard: string, prev: AssignmentEntry | null, next: AssignmentEntry): void {
    if (prev) {
      expect(next.epoch, `${shard}: epoch went back`).toBeGreaterThanOrEqual(prev.epoch);
      if (next.owner !== null && prev.owner !== null && next.owner !== prev.owner) {
        expect(next.epoch, `${shard}: owner changed without a new epoch`).toBeGreaterThan(prev.epoch);
      }
      if (next.phase === "revoking") {
        expect(next.owner).toBe(prev.owner);
        expect(next.epoch).toBe(prev.epoch);
      }
    }
    if (next.owner !== null) {
      const k = `${shard}@${next.epoch}`;
      const o = this.epochOwner.get(k);
      if (o === undefined) this.epochOwner.set(k, next.owner);
      else expect(next.owner, `${k} granted to two owners`).toBe(o);
    }
  }
}

/** 8 shards balanced over w1 and w2 at epoch 1, all echoed back, at time 0. */
function settled(workers = ["w1", "w2"], shards = shardsN(8), timing = T): Sim {
  const sim = new Sim(shards, timing);
  for (const w of workers) sim.beat(w);
  sim.lead(true);
  expect(writesOf(sim.deliverAll())).toEqual([]);
  for (const s of shards) expect(sim.kv.get(s)?.entry).toMatchObject({ epoch: 1, phase: "active" });
  return sim;
}

describe("coordinatorStep: initial assignment", () => {
  it("a leader writes epoch 1 / active / expectedRevision 0 for every shard, balanced", () => {
    const sim = new Sim(shardsN(8));
    expect(sim.beat("w1")).toEqual([{ type: "member-joined", worker: "w1" }]);
    expect(sim.beat("w2")).toEqual([{ type: "member-joined", worker: "w2" }]);
    expect(sim.beat("w1")).toEqual([]); // known member: no second member-joined
    sim.at(10);
    const writes = writesOf(sim.lead(true));
    expect(writes).toHaveLength(8);
    expect(new Set(writes.map((w) => w.shard))).toEqual(new Set(shardsN(8)));
    for (const w of writes) {
      expect(w.expectedRevision).toBe(0);
      expect(w.reason).toBe("initial");
      expect(w.entry).toEqual({ owner: w.entry.owner, epoch: 1, phase: "active", at: 10 });
      expect(["w1", "w2"]).toContain(w.entry.owner);
    }
    expect(writes.filter((w) => w.entry.owner === "w1")).toHaveLength(4);
    sim.deliverAll();
    expect(sim.counts()).toEqual(
      new Map([
        ["w1", 4],
        ["w2", 4],
      ]),
    );
  });

  it("a non-leader issues no writes whatever it observes", () => {
    const sim = new Sim(shardsN(4));
    const all: CoordinatorCommand[] = [];
    all.push(...sim.beat("w1"), ...sim.beat("w2"));
    sim.at(5000);
    all.push(...sim.tick());
    all.push(...sim.entry("demo.0", { owner: "gone", epoch: 3, phase: "active", at: 0 }, 7));
    all.push(...sim.release("gone", "demo.0", 3));
    all.push(...sim.lead(false));
    expect(writesOf(all)).toEqual([]);
    expect(all.filter((c) => c.type === "member-lost")).toEqual([]);
    expect(sim.state.leader).toBe(false);
    // Becoming leader later plans at once.
    sim.beat("w1");
    expect(writesOf(sim.lead(true)).length).toBeGreaterThan(0);
  });

  it("with no member, a leader writes nothing and waits", () => {
    const sim = new Sim(shardsN(4));
    expect(sim.lead(true)).toEqual([]);
    sim.at(10_000);
    expect(sim.tick()).toEqual([]);
  });

  it("does not re-issue writes while they are pending, nor after their echo", () => {
    const sim = new Sim(shardsN(4));
    sim.beat("w1");
    expect(writesOf(sim.lead(true))).toHaveLength(4);
    sim.at(100);
    expect(writesOf(sim.tick())).toEqual([]);
    expect(writesOf(sim.deliverAll())).toEqual([]);
    sim.at(5000);
    expect(writesOf(sim.beat("w1"))).toEqual([]);
  });
});

describe("coordinatorStep: failure hand-off", () => {
  it("does not count the coordinator's own pause as members' silence", () => {
    // Both members beat last at t=0 (settled). The coordinator's loop then stalls from t=50
    // to t=1200: its next tick is 1150 ms late, with the members' heartbeats still unread.
    const sim = settled();
    sim.at(50);
    expect(sim.tick()).toEqual([]);
    sim.at(1200);
    expect(sim.tick(1100)).toEqual([]);
    expect(liveMembers(sim.state, 1200, T).sort()).toEqual(["w1", "w2"]);
    // The queued heartbeat of w2 is read next; w1's never comes (it died in the pause). Its
    // silence counts from the end of the pause: 100 ms before it and 1000 ms after.
    sim.beat("w2");
    sim.at(2100);
    expect(sim.tick()).toEqual([]);
    sim.at(2101);
    expect(sim.tick().filter((c) => c.type === "member-lost")).toEqual([
      { type: "member-lost", worker: "w1", silentMs: 1001 },
    ]);
  });

  it("without a pause, the same silence loses the member", () => {
    const sim = settled();
    sim.at(1200);
    expect(sim.tick().filter((c) => c.type === "member-lost")).toHaveLength(2);
  });

  it("reassigns a silent member's shards at epoch+1 as soon as failureTimeoutMs is exceeded", () => {
    const sim = settled();
    const w1Shards = sim.shards.filter((s) => sim.kv.get(s)!.entry.owner === "w1");
    expect(w1Shards).toHaveLength(4);
    sim.at(900);
    expect(writesOf(sim.beat("w2"))).toEqual([]);
    sim.at(1000);
    const atLimit = sim.tick();
    expect(atLimit).toEqual([]); // exactly failureTimeoutMs of silence: still alive
    expect(liveMembers(sim.state, 1000, T).sort()).toEqual(["w1", "w2"]);
    sim.at(1001);
    const cmds = sim.tick();
    expect(cmds.filter((c) => c.type === "member-lost")).toEqual([
      { type: "member-lost", worker: "w1", silentMs: 1001 },
    ]);
    const writes = writesOf(cmds);
    expect(writes.map((w) => w.shard).sort()).toEqual([...w1Shards].sort());
    for (const w of writes) {
      expect(w.reason).toBe("failure");
      expect(w.entry).toEqual({ owner: "w2", epoch: 2, phase: "active", at: 1001 });
      expect(w.expectedRevision).toBe(sim.kv.get(w.shard)!.revision);
    }
    sim.deliverAll();
    expect(grantsFor(sim.state, "w1")).toEqual({});
    expect(Object.keys(grantsFor(sim.state, "w2"))).toHaveLength(8);
    expect(sim.state.members.w1).toBeUndefined();
  });

  it("a lost member that comes back is announced again and gets shards at a new epoch", () => {
    const sim = settled();
    sim.at(900);
    sim.beat("w2");
    sim.at(1001);
    sim.tick();
    sim.deliverAll();
    sim.at(1100);
    const back = sim.beat("w1");
    expect(back.filter((c) => c.type === "member-joined")).toEqual([{ type: "member-joined", worker: "w1" }]);
    const revokes = writesOf(back);
    expect(revokes).toHaveLength(4);
    for (const w of revokes) {
      const cur = sim.kv.get(w.shard)!.entry;
      expect(w.entry).toMatchObject({ owner: "w2", phase: "revoking", next: "w1", epoch: cur.epoch });
      expect(w.reason).toBe("rebalance");
    }
  });

  it("clears the owner (same epoch) when nobody is left, then assigns at epoch+1", () => {
    const sim = settled(["w1"], shardsN(2));
    sim.at(1500);
    const cmds = sim.tick();
    expect(cmds.filter((c) => c.type === "member-lost")).toHaveLength(1);
    const writes = writesOf(cmds);
    expect(writes).toHaveLength(2);
    for (const w of writes) expect(w.entry).toEqual({ owner: null, epoch: 1, phase: "active", at: 1500 });
    sim.deliverAll();
    sim.at(1600);
    const again = writesOf(sim.beat("w9"));
    expect(again).toHaveLength(2);
    for (const w of again) {
      expect(w.reason).toBe("initial");
      expect(w.entry).toEqual({ owner: "w9", epoch: 2, phase: "active", at: 1600 });
    }
  });
});

describe("coordinatorStep: graceful hand-off", () => {
  /** w3 joins at t=100; returns the two revoking writes, delivered (revokes seen at t=100). */
  function joinW3(sim: Sim): Write[] {
    sim.at(100);
    sim.beat("w1");
    sim.beat("w2");
    const cmds = sim.beat("w3");
    expect(cmds[0]).toEqual({ type: "member-joined", worker: "w3" });
    const revokes = writesOf(cmds);
    expect(writesOf(sim.deliverAll())).toEqual([]);
    return revokes;
  }

  it("a joiner causes revoking writes (same epoch, next=joiner) only for shards that must move", () => {
    const sim = settled();
    const before = sim.owners();
    const revokes = joinW3(sim);
    // 8 shards over 3 members: 3/3/2, one shard from each incumbent.
    expect(revokes).toHaveLength(2);
    expect(new Set(revokes.map((w) => w.entry.owner))).toEqual(new Set(["w1", "w2"]));
    for (const w of revokes) {
      expect(w.reason).toBe("rebalance");
      expect(w.entry).toEqual({
        owner: before.get(w.shard),
        epoch: 1,
        phase: "revoking",
        next: "w3",
        at: 100,
      });
    }
    // The owner keeps its grant until it releases.
    for (const w of revokes) expect(grantsFor(sim.state, w.entry.owner!)[w.shard]).toBe(1);
    expect(grantsFor(sim.state, "w3")).toEqual({});
    // Nothing more happens while waiting for the release.
    sim.at(200);
    expect(writesOf(sim.tick())).toEqual([]);
  });

  it("a release for the right epoch hands the shard to the joiner at epoch+1", () => {
    const sim = settled();
    const [r1, r2] = joinW3(sim);
    sim.at(300);
    const revRev = sim.kv.get(r1!.shard)!.revision;
    const hand = writesOf(sim.release(r1!.entry.owner!, r1!.shard, 1));
    expect(hand).toEqual([
      {
        type: "write",
        shard: r1!.shard,
        entry: { owner: "w3", epoch: 2, phase: "active", at: 300 },
        expectedRevision: revRev,
        reason: "released",
      },
    ]);
    sim.deliverAll();
    expect(writesOf(sim.release(r2!.entry.owner!, r2!.shard, 1))).toHaveLength(1);
    sim.deliverAll();
    expect(grantsFor(sim.state, "w3")).toEqual({ [r1!.shard]: 2, [r2!.shard]: 2 });
    expect([...sim.counts().values()].sort()).toEqual([2, 3, 3]);
    for (const s of sim.shards) expect(sim.kv.get(s)!.entry.phase).toBe("active");
    sim.at(400);
    expect(writesOf(sim.tick())).toEqual([]);
  });

  it("ignores a release with the wrong epoch or from a non-owner", () => {
    const sim = settled();
    const [r1] = joinW3(sim);
    const owner = r1!.entry.owner!;
    const other = owner === "w1" ? "w2" : "w1";
    sim.at(300);
    expect(writesOf(sim.release(owner, r1!.shard, 2))).toEqual([]);
    expect(writesOf(sim.release(owner, r1!.shard, 0))).toEqual([]);
    expect(writesOf(sim.release(other, r1!.shard, 1))).toEqual([]);
    expect(writesOf(sim.release("w3", r1!.shard, 1))).toEqual([]);
    expect(writesOf(sim.release(owner, "nope.0", 1))).toEqual([]);
    expect(sim.state.released).toEqual({});
    sim.at(400);
    expect(writesOf(sim.tick())).toEqual([]);
    expect(writesOf(sim.release(owner, r1!.shard, 1))).toHaveLength(1);
  });

  it("forces a revoke that is not released within handoffTimeoutMs", () => {
    const sim = settled();
    const revokes = joinW3(sim); // seen in revoking at t=100
    const early = sim.advanceBeating(5099, ["w1", "w2", "w3"]);
    expect(writesOf(early)).toEqual([]);
    sim.at(5100);
    const forced = writesOf(sim.tick());
    expect(forced.map((w) => w.shard).sort()).toEqual(revokes.map((w) => w.shard).sort());
    for (const w of forced) {
      expect(w.reason).toBe("handoff-timeout");
      expect(w.entry).toEqual({ owner: "w3", epoch: 2, phase: "active", at: 5100 });
    }
  });

  it("a revoke whose owner dies is handed over at once as a failure", () => {
    const sim = settled();
    const revokes = joinW3(sim);
    const owner = revokes[0]!.entry.owner!;
    const survivors = ["w1", "w2", "w3"].filter((w) => w !== owner);
    // Last beat of the owner at t=100: still alive at t=1100 (exactly failureTimeoutMs).
    expect(writesOf(sim.advanceBeating(1100, survivors, 100))).toEqual([]);
    sim.at(1101);
    const cmds = sim.tick();
    const writes = writesOf(cmds);
    const revoked = writes.find((w) => w.shard === revokes[0]!.shard)!;
    expect(revoked.reason).toBe("failure");
    expect(revoked.entry).toMatchObject({ owner: "w3", epoch: 2, phase: "active" });
    expect(cmds.filter((c) => c.type === "member-lost")).toEqual([
      { type: "member-lost", worker: owner, silentMs: 1001 },
    ]);
  });

  it("a leaving member gets its shards revoked and none assigned", () => {
    const sim = settled();
    const w1Shards = sim.shards.filter((s) => sim.kv.get(s)!.entry.owner === "w1");
    sim.at(100);
    const writes = writesOf(sim.beat("w1", { leaving: true }));
    expect(writes.map((w) => w.shard).sort()).toEqual([...w1Shards].sort());
    for (const w of writes) {
      expect(w.entry).toEqual({ owner: "w1", epoch: 1, phase: "revoking", next: "w2", at: 100 });
      expect(w.reason).toBe("rebalance");
    }
    sim.deliverAll();
    sim.at(200);
    expect(writesOf(sim.beat("w1", { leaving: true }))).toEqual([]);
    for (const s of w1Shards) {
      const hand = writesOf(sim.release("w1", s, 1));
      expect(hand).toHaveLength(1);
      expect(hand[0]!.entry).toMatchObject({ owner: "w2", epoch: 2, phase: "active" });
      expect(hand[0]!.reason).toBe("released");
      sim.deliverAll();
    }
    expect(grantsFor(sim.state, "w1")).toEqual({});
    expect(Object.values(grantsFor(sim.state, "w2"))).toHaveLength(8);
    // A new member joining later never gets anything routed to the leaving one.
    sim.at(300);
    sim.beat("w1", { leaving: true });
    sim.beat("w2");
    const joined = writesOf(sim.beat("w3"));
    for (const w of joined) expect(w.entry.next).toBe("w3");
    expect(
      sim.accepted.filter((w) => w.entry.owner === "w1" && w.entry.phase === "active" && w.entry.epoch > 1),
    ).toEqual([]);
  });

  it("a sole leaving member is still revoked; on release the shard is unowned until a newcomer gets epoch+1", () => {
    const sim = settled(["w1"], shardsN(2));
    sim.at(100);
    const revokes = writesOf(sim.beat("w1", { leaving: true }));
    expect(revokes).toHaveLength(2);
    for (const w of revokes) {
      expect(w.entry).toEqual({ owner: "w1", epoch: 1, phase: "revoking", next: null, at: 100 });
    }
    sim.deliverAll();
    sim.at(200);
    const cleared = writesOf(sim.release("w1", "demo.0", 1));
    expect(cleared).toHaveLength(1);
    expect(cleared[0]!.entry).toEqual({ owner: null, epoch: 1, phase: "active", at: 200 });
    expect(cleared[0]!.reason).toBe("released");
    sim.deliverAll();
    expect(grantsFor(sim.state, "w1")).toEqual({ "demo.1": 1 });
    sim.at(300);
    const taken = writesOf(sim.beat("w2"));
    const d0 = taken.find((w) => w.shard === "demo.0")!;
    expect(d0.entry).toEqual({ owner: "w2", epoch: 2, phase: "active", at: 300 });
  });

  it("leadership true restarts every hand-off clock", () => {
    const sim = settled();
    const revokes = joinW3(sim); // revoking since t=100
    const all = ["w1", "w2", "w3"];
    sim.advanceBeating(1000, all);
    expect(sim.lead(false)).toEqual([]);
    sim.advanceBeating(4000, all);
    expect(writesOf(sim.lead(true))).toEqual([]);
    for (const w of revokes) expect(sim.state.revokingSince[w.shard]).toBe(4000);
    // The old deadline (5100) passes without a forced hand-off.
    expect(writesOf(sim.advanceBeating(8999, all))).toEqual([]);
    sim.at(9000);
    const forced = writesOf(sim.tick());
    expect(forced).toHaveLength(2);
    for (const w of forced) expect(w.reason).toBe("handoff-timeout");
  });
});

describe("coordinatorStep: pending writes", () => {
  it("re-issues an unechoed write only after writeTimeoutMs", () => {
    const sim = new Sim(shardsN(4));
    sim.beat("w1");
    const first = writesOf(sim.lead(true));
    expect(first).toHaveLength(4);
    sim.at(499);
    expect(writesOf(sim.tick())).toEqual([]);
    sim.at(500);
    const again = writesOf(sim.tick());
    expect(again).toHaveLength(4);
    for (const w of again) {
      expect(w.expectedRevision).toBe(0);
      expect(w.entry).toEqual({ owner: "w1", epoch: 1, phase: "active", at: 500 });
    }
    // Both copies reach the KV: CAS accepts one per shard, the other fails harmlessly.
    expect(writesOf(sim.deliverAll())).toEqual([]);
    expect(sim.accepted).toHaveLength(4);
  });

  it("re-issues a write at once after write-failed, for that shard only", () => {
    const sim = new Sim(shardsN(4));
    sim.beat("w1");
    sim.lead(true);
    sim.at(10);
    const w = writesOf(sim.writeFailed("demo.2"));
    expect(w).toHaveLength(1);
    expect(w[0]).toMatchObject({ shard: "demo.2", expectedRevision: 0, reason: "initial" });
    expect(writesOf(sim.writeFailed("nope.9"))).toEqual([]);
  });

  it("a new leadership forgets pending writes and plans again at once", () => {
    const sim = new Sim(shardsN(4));
    sim.beat("w1");
    sim.lead(true);
    sim.at(1);
    expect(sim.lead(false)).toEqual([]);
    expect(sim.state.pending).toEqual({});
    expect(writesOf(sim.lead(true))).toHaveLength(4);
  });

  it("ignores stale (lower revision) entries and entries of unknown shards", () => {
    const sim = new Sim(shardsN(2));
    const e5: AssignmentEntry = { owner: "w1", epoch: 5, phase: "active", at: 0 };
    sim.entry("demo.0", e5, 10);
    sim.entry("demo.0", { owner: "w0", epoch: 4, phase: "active", at: 0 }, 9);
    expect(sim.state.entries["demo.0"]).toEqual({ entry: e5, revision: 10 });
    sim.entry("other.0", e5, 11);
    expect(sim.state.entries["other.0"]).toBeUndefined();
    // A deletion at a newer revision is taken.
    sim.entry("demo.0", null, 12);
    expect(sim.state.entries["demo.0"]).toEqual({ entry: null, revision: 12 });
  });

  it("a revoking entry re-written at a new epoch restarts its hand-off clock; same epoch does not", () => {
    const sim = new Sim(shardsN(1));
    const rev = (epoch: number): AssignmentEntry => ({
      owner: "a",
      epoch,
      phase: "revoking",
      next: "b",
      at: 0,
    });
    sim.at(10);
    sim.entry("demo.0", rev(1), 1);
    expect(sim.state.revokingSince["demo.0"]).toBe(10);
    sim.at(20);
    sim.entry("demo.0", rev(1), 2);
    expect(sim.state.revokingSince["demo.0"]).toBe(10);
    sim.at(30);
    sim.entry("demo.0", rev(2), 3);
    expect(sim.state.revokingSince["demo.0"]).toBe(30);
    sim.entry("demo.0", { owner: "b", epoch: 3, phase: "active", at: 0 }, 4);
    expect(sim.state.revokingSince["demo.0"]).toBeUndefined();
  });
});

describe("grantsFor", () => {
  it("lists only the worker's shards with their epochs", () => {
    const state = initialCoordinatorState(["p.0", "p.1", "p.2", "p.3"]);
    state.entries["p.0"] = { entry: { owner: "a", epoch: 3, phase: "active", at: 0 }, revision: 1 };
    state.entries["p.1"] = { entry: { owner: "b", epoch: 7, phase: "active", at: 0 }, revision: 2 };
    state.entries["p.2"] = {
      entry: { owner: "a", epoch: 2, phase: "revoking", next: "b", at: 0 },
      revision: 3,
    };
    state.entries["p.3"] = { entry: { owner: null, epoch: 9, phase: "active", at: 0 }, revision: 4 };
    expect(grantsFor(state, "a")).toEqual({ "p.0": 3, "p.2": 2 });
    expect(grantsFor(state, "b")).toEqual({ "p.1": 7 });
    expect(grantsFor(state, "c")).toEqual({});
  });
});

describe("coordinatorStep (randomised): fencing invariants", () => {
  type Op =
    | { t: "beat"; w: number; leaving: boolean }
    | { t: "advance"; ms: number }
    | { t: "deliver"; i: number }
    | { t: "drop"; i: number }
    | { t: "fail"; i: number }
    | { t: "release"; s: number; wrongEpoch: boolean }
    | { t: "leader"; v: boolean }
    | { t: "tick" };
  const W = ["w0", "w1", "w2", "w3"];
  const op: fc.Arbitrary<Op> = fc.oneof(
    {
      weight: 5,
      arbitrary: fc.record({ t: fc.constant("beat" as const), w: fc.nat(3), leaving: fc.boolean() }),
    },
    {
      weight: 3,
      arbitrary: fc.record({ t: fc.constant("advance" as const), ms: fc.integer({ min: 0, max: 1500 }) }),
    },
    { weight: 5, arbitrary: fc.record({ t: fc.constant("deliver" as const), i: fc.nat() }) },
    { weight: 1, arbitrary: fc.record({ t: fc.constant("drop" as const), i: fc.nat() }) },
    { weight: 1, arbitrary: fc.record({ t: fc.constant("fail" as const), i: fc.nat() }) },
    {
      weight: 3,
      arbitrary: fc.record({ t: fc.constant("release" as const), s: fc.nat(5), wrongEpoch: fc.boolean() }),
    },
    { weight: 1, arbitrary: fc.record({ t: fc.constant("leader" as const), v: fc.boolean() }) },
    { weight: 1, arbitrary: fc.record({ t: fc.constant("tick" as const) }) },
  );

  it.each([
    ["revoking at once", T],
    ["preparing first", { ...T, prepareTimeoutMs: 1500 }],
  ])("never grants one epoch to two owners, never lowers an epoch, and converges (%s)", (_, timing) => {
    fc.assert(
      fc.property(fc.array(op, { maxLength: 150 }), (ops) => {
        const sim = new Sim(shardsN(6), timing);
        sim.lead(true);
        for (const o of ops) {
          switch (o.t) {
            case "beat":
              sim.beat(W[o.w]!, { leaving: o.leaving });
              break;
            case "advance":
              sim.at(sim.now + o.ms);
              break;
            case "deliver":
              if (sim.inflight.length > 0) sim.deliver(sim.inflight[o.i % sim.inflight.length]!);
              break;
            case "drop":
              if (sim.inflight.length > 0) sim.drop(sim.inflight[o.i % sim.inflight.length]!);
              break;
            case "fail":
              if (sim.inflight.length > 0) {
                const w = sim.inflight[o.i % sim.inflight.length]!;
                sim.drop(w);
                sim.writeFailed(w.shard);
              }
              break;
            case "release": {
              const s = sim.shards[o.s]!;
              const e = sim.kv.get(s)?.entry;
              if (e?.owner) sim.release(e.owner, s, e.epoch + (o.wrongEpoch ? 1 : 0));
              break;
            }
            case "leader":
              sim.lead(o.v);
              break;
            case "tick":
              sim.tick();
              break;
          }
        }
        // Convergence: w0..w2 stay, w3 goes silent; everybody releases what is revoked.
        sim.lead(true);
        for (let round = 0; round < 80; round++) {
          sim.at(sim.now + 100);
          for (const w of ["w0", "w1", "w2"]) sim.beat(w);
          sim.deliverAll();
          for (const s of sim.shards) {
            const e = sim.kv.get(s)?.entry;
            if (e?.phase === "revoking" && e.owner) sim.release(e.owner, s, e.epoch);
          }
          sim.deliverAll();
        }
        const counts = sim.counts();
        for (const s of sim.shards) {
          const e = sim.kv.get(s)?.entry;
          expect(e?.phase).toBe("active");
          expect(["w0", "w1", "w2"]).toContain(e?.owner);
        }
        expect([...counts.values()].sort()).toEqual([2, 2, 2]);
        sim.at(sim.now + 100);
        for (const w of ["w0", "w1", "w2"]) expect(writesOf(sim.beat(w))).toEqual([]);
      }),
      { numRuns: 200 },
    );
  });
});

/** A leader core over `shards`, stepped event by event; returns each step's writes. */
function leaderCore(shards: string[]) {
  let state = initialCoordinatorState(shards);
  const step = (ev: Parameters<typeof coordinatorStep>[1]): Write[] => {
    const r = coordinatorStep(state, ev, T);
    state = r.state;
    return writesOf(r.commands);
  };
  step({ type: "leadership", leader: true, now: 0 });
  return { step, state: () => state };
}

describe("coordinator core: a sink fenced above the assignment", () => {
  it("moves the shard past the sink's epoch when its owner reports being fenced by it", () => {
    const { step } = leaderCore(["demo.0"]);
    step({
      type: "heartbeat",
      hb: { worker: "w1", capacity: 1, held: {}, leaving: false, sentAt: 0 },
      now: 0,
    });
    // The KV says w1 owns the shard at epoch 2, but the sink has fenced epoch 7 (say the
    // assignment bucket was recreated over an old sink): w1 can never commit at 2.
    step({
      type: "entry",
      shard: "demo.0",
      entry: { owner: "w1", epoch: 2, phase: "active", at: 0 },
      revision: 5,
      now: 1,
    });
    const writes = step({ type: "released", worker: "w1", shard: "demo.0", epoch: 2, fencedBy: 7, now: 2 });
    expect(writes).toHaveLength(1);
    expect(writes[0]!.entry).toMatchObject({ owner: "w1", epoch: 8, phase: "active" });
    expect(writes[0]!.reason).toBe("refence");
    expect(writes[0]!.expectedRevision).toBe(5);
    // Later epochs stay above the floor too.
    step({
      type: "entry",
      shard: "demo.0",
      entry: { owner: "w1", epoch: 8, phase: "active", at: 2 },
      revision: 6,
      now: 3,
    });
    expect(step({ type: "tick", now: 4 })).toHaveLength(0);
  });

  it("ignores a fenced report from a worker that no longer owns the epoch, but keeps the floor", () => {
    const { step, state } = leaderCore(["demo.0"]);
    step({
      type: "heartbeat",
      hb: { worker: "w2", capacity: 1, held: {}, leaving: false, sentAt: 0 },
      now: 0,
    });
    step({
      type: "entry",
      shard: "demo.0",
      entry: { owner: "w2", epoch: 9, phase: "active", at: 0 },
      revision: 3,
      now: 1,
    });
    expect(
      step({ type: "released", worker: "w1", shard: "demo.0", epoch: 4, fencedBy: 5, now: 2 }),
    ).toHaveLength(0);
    expect(state().floor["demo.0"]).toBe(5);
  });
});

describe("coordinator core: a view ahead of the store (a phantom the watch saw)", () => {
  it("takes the store's value read after a lost write, even at a lower revision; the watch's older entries stay ignored", () => {
    const { step, state } = leaderCore(["demo.0"]);
    step({
      type: "heartbeat",
      hb: { worker: "w1", capacity: 1, held: { "demo.0": 3 }, leaving: false, sentAt: 0 },
      now: 0,
    });
    // The watch showed revision 12, a write the KV then lost; the store is at revision 10.
    const phantom = { owner: "w1", epoch: 3, phase: "active", at: 0 } as const;
    step({ type: "entry", shard: "demo.0", entry: phantom, revision: 12, now: 1 });
    const stored = { owner: "w1", epoch: 2, phase: "active", at: 0 } as const;
    // A late watch entry below the view is ignored, as ever...
    step({ type: "entry", shard: "demo.0", entry: stored, revision: 10, now: 2 });
    expect(state().entries["demo.0"]).toEqual({ entry: phantom, revision: 12 });
    // ...but the re-read after a compare-and-set lost against revision 12 is the store's truth:
    // without it every later write would expect revision 12 and lose again, forever.
    step({ type: "entry", shard: "demo.0", entry: stored, revision: 10, now: 3, reread: true });
    expect(state().entries["demo.0"]).toEqual({ entry: stored, revision: 10 });
    const writes = step({ type: "released", worker: "w1", shard: "demo.0", epoch: 2, fencedBy: 3, now: 4 });
    expect(writes).toHaveLength(1);
    expect(writes[0]).toMatchObject({ expectedRevision: 10, entry: { epoch: 4 }, reason: "refence" });
  });
});

describe("coordinator core: an owner that is alive but not running its shard", () => {
  it("re-asserts the shard at a new epoch after stuckMs of heartbeats without it", () => {
    const sim = new Sim(["demo.0"], { ...T, stuckMs: 2000 });
    sim.lead(true);
    sim.beat("w1");
    sim.deliverAll();
    expect(sim.kv.get("demo.0")?.entry).toMatchObject({ owner: "w1", epoch: 1 });
    // w1 keeps beating but lists nothing (it saw a write the KV then lost, say).
    sim.at(100).beat("w1", { held: {} });
    expect(writesOf(sim.at(2000).beat("w1", { held: {} }))).toHaveLength(0);
    const w = writesOf(sim.at(2100).beat("w1", { held: {} }));
    expect(w).toHaveLength(1);
    expect(w[0]!.entry).toMatchObject({ owner: "w1", epoch: 2, phase: "active" });
    expect(w[0]!.reason).toBe("reassert");
  });

  it("leaves a shard alone while its owner lists it", () => {
    const sim = new Sim(["demo.0"], { ...T, stuckMs: 2000 });
    sim.lead(true);
    sim.beat("w1");
    sim.deliverAll();
    for (let t = 500; t <= 10_000; t += 500) expect(writesOf(sim.at(t).beat("w1"))).toHaveLength(0);
  });
});

describe("coordinatorStep: prepared moves (prepareTimeoutMs)", () => {
  const TP: CoordinatorTiming = { ...T, prepareTimeoutMs: 1500 };

  /** w3 joins at t=100 under TP; returns the announcing writes, delivered. */
  function announce(sim: Sim): Write[] {
    sim.at(100);
    sim.beat("w1");
    sim.beat("w2");
    const writes = writesOf(sim.beat("w3"));
    expect(writesOf(sim.deliverAll())).toEqual([]);
    return writes;
  }

  it("names the joiner next on the active entry, and revokes once it reports the shard prepared", () => {
    const sim = settled(["w1", "w2"], shardsN(8), TP);
    const before = sim.owners();
    const writes = announce(sim);
    expect(writes).toHaveLength(2);
    for (const w of writes) {
      expect(w.reason).toBe("prepare");
      expect(w.entry).toEqual({ owner: before.get(w.shard), epoch: 1, phase: "active", next: "w3", at: 100 });
      // The owner keeps committing meanwhile.
      expect(grantsFor(sim.state, w.entry.owner!)[w.shard]).toBe(1);
    }
    const [a, b] = writes.map((w) => w.shard) as [string, string];
    // Nothing moves until the joiner reports; then only the shard it prepared is revoked.
    sim.at(300);
    expect(writesOf(sim.beat("w3"))).toEqual([]);
    // A preparation for another epoch does not count.
    sim.at(350);
    expect(writesOf(sim.beat("w3", { prepared: { [a]: 3 } }))).toEqual([]);
    sim.at(400);
    const revoke = writesOf(sim.beat("w3", { prepared: { [a]: 2 } }));
    expect(revoke).toEqual([
      {
        type: "write",
        shard: a,
        entry: { owner: before.get(a), epoch: 1, phase: "revoking", next: "w3", at: 400 },
        expectedRevision: sim.kv.get(a)!.revision,
        reason: "rebalance",
      },
    ]);
    sim.deliverAll();
    // The other is revoked anyway once prepareTimeoutMs has passed since it was announced.
    expect(writesOf(sim.advanceBeating(1599, ["w1", "w2", "w3"], 100))).toEqual([]);
    sim.at(1600);
    const late = writesOf(sim.tick());
    expect(late.map((w) => [w.shard, w.entry.phase, w.entry.next])).toEqual([[b, "revoking", "w3"]]);
  });

  it("lets the preparation go when the move is off (the joiner died)", () => {
    const sim = settled(["w1", "w2"], shardsN(8), TP);
    const writes = announce(sim);
    // w3 never beats again: lost after failureTimeoutMs; the shards stay with their owners.
    const off = writesOf(sim.advanceBeating(1200, ["w1", "w2"], 100));
    expect(off.map((w) => w.shard).sort()).toEqual(writes.map((w) => w.shard).sort());
    for (const w of off) {
      expect(w.reason).toBe("move-off");
      expect(w.entry).toMatchObject({ epoch: 1, phase: "active" });
      expect(w.entry.next).toBeUndefined();
    }
    sim.deliverAll();
    for (const w of writes) expect(sim.state.preparingSince[w.shard]).toBeUndefined();
  });

  it("revokes a leaving owner's shards at once, without preparing", () => {
    const sim = settled(["w1", "w2"], shardsN(8), TP);
    sim.at(100);
    const writes = writesOf(sim.beat("w1", { leaving: true }));
    expect(writes.length).toBeGreaterThan(0);
    for (const w of writes) expect(w.entry).toMatchObject({ owner: "w1", phase: "revoking", next: "w2" });
  });

  it("a new leader restarts the preparation clock", () => {
    const sim = settled(["w1", "w2"], shardsN(8), TP);
    const writes = announce(sim);
    expect(writesOf(sim.advanceBeating(1000, ["w1", "w2", "w3"], 100))).toEqual([]);
    sim.lead(true);
    for (const w of writes) expect(sim.state.preparingSince[w.shard]).toBe(1000);
    expect(writesOf(sim.advanceBeating(2400, ["w1", "w2", "w3"], 100))).toEqual([]);
    sim.at(2500);
    expect(writesOf(sim.tick()).map((w) => w.entry.phase)).toEqual(["revoking", "revoking"]);
  });
});
