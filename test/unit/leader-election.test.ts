import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  isLeader,
  type LeaderAction,
  type LeaderObservation,
  type LeaderRecord,
  leaderAction,
} from "../../shared/core/leader-election.js";
import { ManualClock } from "../../shared/testkit/manual-clock.js";

const TTL = { ttlMs: 1500 };

const obs = (record: LeaderRecord | null, revision: number, observedAt: number): LeaderObservation => ({
  record,
  revision,
  observedAt,
});

describe("leaderAction", () => {
  it("creates the record at term 1 when it is absent", () => {
    expect(leaderAction(obs(null, 0, 0), "c1", 0, TTL)).toEqual({
      type: "create",
      record: { holder: "c1", term: 1 },
    });
    // Whatever the time.
    expect(leaderAction(obs(null, 0, 0), "c2", 99_999, TTL)).toEqual({
      type: "create",
      record: { holder: "c2", term: 1 },
    });
  });

  it("the holder renews only once ttl/3 has passed since it saw its revision", () => {
    const rec = { holder: "c1", term: 4 };
    const o = obs(rec, 17, 1000);
    expect(leaderAction(o, "c1", 1000, TTL)).toEqual({ type: "wait" });
    expect(leaderAction(o, "c1", 1499, TTL)).toEqual({ type: "wait" });
    expect(leaderAction(o, "c1", 1500, TTL)).toEqual({ type: "renew", record: rec, expectedRevision: 17 });
    expect(leaderAction(o, "c1", 9000, TTL)).toEqual({ type: "renew", record: rec, expectedRevision: 17 });
  });

  it("renewal keeps the term (the holder does not change)", () => {
    const a = leaderAction(obs({ holder: "c1", term: 9 }, 3, 0), "c1", 600, TTL);
    expect(a.type).toBe("renew");
    if (a.type === "renew") expect(a.record.term).toBe(9);
  });

  it("a standby waits through ttl of silence, then takes over at term+1 on the observed revision", () => {
    const o = obs({ holder: "c1", term: 4 }, 17, 1000);
    expect(leaderAction(o, "c2", 1000, TTL)).toEqual({ type: "wait" });
    expect(leaderAction(o, "c2", 2499, TTL)).toEqual({ type: "wait" });
    expect(leaderAction(o, "c2", 2500, TTL)).toEqual({
      type: "takeover",
      record: { holder: "c2", term: 5 },
      expectedRevision: 17,
    });
  });

  it("the standby's silence is measured from its own observation, not the holder's clock", () => {
    // The record changed (renewed) at revision 18, first seen by the standby at 2400.
    const o = obs({ holder: "c1", term: 4 }, 18, 2400);
    expect(leaderAction(o, "c2", 2500, TTL)).toEqual({ type: "wait" });
    expect(leaderAction(o, "c2", 3899, TTL)).toEqual({ type: "wait" });
    expect(leaderAction(o, "c2", 3900, TTL).type).toBe("takeover");
  });

  it("never renews early or takes over early (property)", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 300, max: 60_000 }),
        fc.nat(1_000_000),
        fc.nat(200_000),
        fc.nat(1000),
        fc.boolean(),
        (ttlMs, observedAt, elapsed, term, self) => {
          const rec = { holder: "c1", term };
          const a: LeaderAction = leaderAction(
            obs(rec, 7, observedAt),
            self ? "c1" : "c2",
            observedAt + elapsed,
            {
              ttlMs,
            },
          );
          if (self) {
            expect(a.type).toBe(elapsed >= ttlMs / 3 ? "renew" : "wait");
          } else if (elapsed >= ttlMs) {
            expect(a).toEqual({
              type: "takeover",
              record: { holder: "c2", term: term + 1 },
              expectedRevision: 7,
            });
          } else {
            expect(a).toEqual({ type: "wait" });
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe("isLeader", () => {
  it("is true only for the holder, and only within ttl of its last observed revision", () => {
    const o = obs({ holder: "c1", term: 2 }, 5, 1000);
    expect(isLeader(o, "c1", 1000, TTL)).toBe(true);
    expect(isLeader(o, "c1", 2499, TTL)).toBe(true);
    expect(isLeader(o, "c1", 2500, TTL)).toBe(false);
    expect(isLeader(o, "c2", 1000, TTL)).toBe(false);
    expect(isLeader(obs(null, 0, 1000), "c1", 1000, TTL)).toBe(false);
  });

  it("a holder stops acting as leader no later than a standby may take over (same observation time)", () => {
    fc.assert(
      fc.property(fc.integer({ min: 300, max: 10_000 }), fc.nat(100_000), fc.nat(20_000), (ttlMs, at, dt) => {
        const o = obs({ holder: "c1", term: 1 }, 3, at);
        const now = at + dt;
        const standbyTakesOver = leaderAction(o, "c2", now, { ttlMs }).type === "takeover";
        expect(isLeader(o, "c1", now, { ttlMs })).toBe(dt < ttlMs);
        expect(isLeader(o, "c2", now, { ttlMs })).toBe(false);
        if (standbyTakesOver) expect(isLeader(o, "c1", now, { ttlMs })).toBe(false);
      }),
      { numRuns: 300 },
    );
  });
});

describe("leader election, simulated with a ManualClock and a CAS register", () => {
  /** One KV key with revisions and compare-and-set, as the JetStream KV provides. */
  class Register {
    record: LeaderRecord | null = null;
    revision = 0;
    cas(record: LeaderRecord, expected: number): boolean {
      if (expected !== this.revision) return false;
      this.record = record;
      this.revision++;
      return true;
    }
  }

  /** A coordinator's view: when it first saw each revision (by its own clock). */
  class Candidate {
    private seenRevision = -1;
    private seenAt = 0;
    constructor(
      readonly id: string,
      private readonly clock: ManualClock,
      private readonly reg: Register,
    ) {}
    observe(): LeaderObservation {
      if (this.reg.revision !== this.seenRevision) {
        this.seenRevision = this.reg.revision;
        this.seenAt = this.clock.now();
      }
      return obs(this.reg.record, this.reg.revision, this.seenAt);
    }
    step(): LeaderAction {
      const a = leaderAction(this.observe(), this.id, this.clock.now(), TTL);
      if (a.type === "create") this.reg.cas(a.record, 0);
      if (a.type === "renew" || a.type === "takeover") this.reg.cas(a.record, a.expectedRevision);
      this.observe();
      return a;
    }
    leader(): boolean {
      return isLeader(this.observe(), this.id, this.clock.now(), TTL);
    }
  }

  it("one leader at a time; a standby takes over after the leader goes silent for ttl", () => {
    const clock = new ManualClock(0);
    const reg = new Register();
    const c1 = new Candidate("c1", clock, reg);
    const c2 = new Candidate("c2", clock, reg);
    expect(c1.step().type).toBe("create");
    expect(c2.step().type).toBe("wait");
    expect(reg.record).toEqual({ holder: "c1", term: 1 });

    // c1 renews every 100ms of polling: c2 never takes over.
    for (let t = 0; t < 10_000; t += 100) {
      clock.advance(100);
      c1.step();
      expect(c2.step().type).not.toBe("takeover");
      expect(c1.leader()).toBe(true);
      expect(c2.leader()).toBe(false);
    }
    expect(reg.record).toEqual({ holder: "c1", term: 1 });

    // c1 stops (crash or pause): c2 takes over at term 2 after ttl of silence.
    const silentSince = clock.now();
    let tookOverAt = -1;
    for (let i = 0; i < 40 && tookOverAt < 0; i++) {
      clock.advance(100);
      if (c2.step().type === "takeover") tookOverAt = clock.now();
    }
    expect(tookOverAt - silentSince).toBeGreaterThanOrEqual(TTL.ttlMs);
    expect(tookOverAt - silentSince).toBeLessThanOrEqual(TTL.ttlMs + 100);
    expect(reg.record).toEqual({ holder: "c2", term: 2 });
    expect(c2.leader()).toBe(true);
    // The paused c1 wakes up: it sees the new holder, is no leader and does not fight back.
    expect(c1.leader()).toBe(false);
    expect(c1.step().type).toBe("wait");
    expect(reg.record).toEqual({ holder: "c2", term: 2 });
  });

  it("two standbys racing for a takeover: CAS lets exactly one win", () => {
    const clock = new ManualClock(0);
    const reg = new Register();
    const c1 = new Candidate("c1", clock, reg);
    c1.step();
    const c2 = new Candidate("c2", clock, reg);
    const c3 = new Candidate("c3", clock, reg);
    c2.observe();
    c3.observe();
    clock.advance(TTL.ttlMs);
    const a2 = leaderAction(c2.observe(), "c2", clock.now(), TTL);
    const a3 = leaderAction(c3.observe(), "c3", clock.now(), TTL);
    expect(a2.type).toBe("takeover");
    expect(a3.type).toBe("takeover");
    if (a2.type !== "takeover" || a3.type !== "takeover") return;
    expect(reg.cas(a2.record, a2.expectedRevision)).toBe(true);
    expect(reg.cas(a3.record, a3.expectedRevision)).toBe(false);
    expect(reg.record).toEqual({ holder: "c2", term: 2 });
    expect(c3.leader()).toBe(false);
    expect(c2.leader()).toBe(true);
  });
});
