import { describe, expect, it } from "vitest";
import { DashboardModel, type Observation } from "../../nodes/coordinator/dashboard/dashboard-model.js";
import type { ShardConsumerInfo } from "../../shared/adapters/nats/shard-consumers.js";
import type { AssignmentEntry } from "../../shared/contract/ownership.js";
import type { MemberView } from "../../shared/core/coordinator-core.js";

const shards = ["demo.0", "demo.1"];
const member = (lastSeen: number, held: Record<string, number> = {}): MemberView => ({
  capacity: 1,
  lastSeen,
  leaving: false,
  held,
  prepared: {},
  delayMs: 2,
});
const entry = (owner: string | null, epoch: number, phase: AssignmentEntry["phase"] = "active") => ({
  owner,
  epoch,
  phase,
  at: 0,
});
const consumer = (name: string, count: number, lag = 0): ShardConsumerInfo => ({
  name,
  pending: lag,
  ackPending: 0,
  ackFloorStreamSeq: count * 2,
  ackFloorConsumerSeq: count,
});

function obs(at: number, over: Partial<Observation> = {}): Observation {
  return {
    at,
    leader: { holder: "c1", term: 1 },
    members: { w1: member(at), w2: member(at) },
    entries: { "demo.0": entry("w1", 1), "demo.1": entry("w2", 1) },
    consumers: new Map([
      [
        "demo",
        new Map([
          ["demo-s0-e1", consumer("demo-s0-e1", 100, 5)],
          ["demo-s1-e1", consumer("demo-s1-e1", 50, 3)],
        ]),
      ],
    ]),
    checkpoints: { "demo.0": { epoch: 1, seq: 210 }, "demo.1": null },
    sinkError: null,
    ...over,
  };
}

describe("DashboardModel", () => {
  it("shows the sink unhealthy while a worker reports a shard that cannot commit, or the sink does not answer", () => {
    const m = new DashboardModel({ self: "c1", shards, failureTimeoutMs: 1000 });
    expect(m.observe(obs(10_000)).state.sink).toMatchObject({ healthy: true, reachable: true, trouble: {} });
    const troubled = {
      ...member(11_000),
      sinkTrouble: {
        "demo.0": { since: 8_500, error: "postgres commit: connect ECONNREFUSED", breaker: "open" as const },
      },
    };
    const { state } = m.observe(obs(11_000, { members: { w1: troubled, w2: member(11_000) } }));
    expect(state.sink).toEqual({
      healthy: false,
      reachable: true,
      error: null,
      trouble: {
        "demo.0": {
          worker: "w1",
          sinceMsAgo: 2_500,
          error: "postgres commit: connect ECONNREFUSED",
          breaker: "open",
        },
      },
    });
    expect(m.observe(obs(12_000, { sinkError: "timeout" })).state.sink).toMatchObject({
      healthy: false,
      reachable: false,
      error: "timeout",
    });
  });

  it("builds the state: every shard with owner, epoch, phase, committed, lag; members with shard counts", () => {
    const m = new DashboardModel({ self: "c1", shards, failureTimeoutMs: 1000 });
    const { state } = m.observe(obs(10_000));
    expect(state.leader).toEqual({ holder: "c1", term: 1 });
    expect(state.shards).toEqual([
      {
        shard: "demo.0",
        pipeline: "demo",
        index: 0,
        owner: "w1",
        epoch: 1,
        phase: "active",
        next: null,
        committed: 210,
        fencedEpoch: 1,
        lag: 5,
        rate: null,
      },
      // No sink answer: the consumer's ack floor stands in for the committed sequence.
      expect.objectContaining({ shard: "demo.1", owner: "w2", committed: 100, fencedEpoch: null, lag: 3 }),
    ]);
    expect(state.members.map((x) => [x.id, x.status, x.shards])).toEqual([
      ["w1", "alive", 1],
      ["w2", "alive", 1],
    ]);
    expect(state.totals).toEqual({ rate: null, lag: 8, owned: 2, shards: 2 });
  });

  it("computes records/s from the consumers' progress between observations", () => {
    const m = new DashboardModel({ self: "c1", shards, failureTimeoutMs: 1000 });
    m.observe(obs(10_000));
    const next = obs(12_000, {
      consumers: new Map([
        [
          "demo",
          new Map([
            ["demo-s0-e1", consumer("demo-s0-e1", 300)],
            ["demo-s1-e1", consumer("demo-s1-e1", 50)],
          ]),
        ],
      ]),
    });
    const { state, point } = m.observe(next);
    expect(state.shards.map((s) => s.rate)).toEqual([100, 0]);
    expect(point).toEqual({ at: 12_000, rate: 100, lag: 0 });
    expect(m.history()).toHaveLength(2);
  });

  it("reports a failover once, whether the leader's commands or the observation sees it first", () => {
    const events: string[] = [];
    const m = new DashboardModel({
      self: "c1",
      shards,
      failureTimeoutMs: 1000,
      onEvent: (e) => events.push(`${e.type}:${e.text}`),
    });
    m.observe(obs(10_000));
    expect(events).toEqual([
      "leader:c1 is leader (term 1)",
      "member-joined:w1 joined",
      "member-joined:w2 joined",
    ]);
    events.length = 0;
    // Leader: the core reports the loss and the write, then forgets the member.
    m.command({ type: "member-lost", worker: "w2", silentMs: 1100 }, 11_000);
    m.command(
      { type: "write", shard: "demo.1", entry: entry("w1", 2), expectedRevision: 3, reason: "failure" },
      11_000,
    );
    const { state } = m.observe(
      obs(11_500, {
        members: { w1: member(11_500) },
        entries: { "demo.0": entry("w1", 1), "demo.1": entry("w1", 2) },
      }),
    );
    expect(events).toEqual([
      "member-lost:w2 lost: no heartbeat for 1100 ms",
      "assignment:demo.1 → w1 at epoch 2 (failure)",
    ]);
    expect(state.members.find((x) => x.id === "w2")).toMatchObject({ status: "lost", shards: 0, held: null });
    expect(m.recentEvents().map((e) => e.id)).toEqual([1, 2, 3, 4, 5]);
  });

  it("does not report its own writes again when the observation catches up with them late", () => {
    const events: string[] = [];
    const m = new DashboardModel({
      self: "c1",
      shards,
      failureTimeoutMs: 1000,
      onEvent: (e) => events.push(`${e.type}:${e.text}`),
    });
    const write = (shard: string, e: AssignmentEntry, reason: "initial" | "rebalance" | "released") =>
      m.command({ type: "write", shard, entry: e, expectedRevision: 0, reason }, 10_000);
    write("demo.0", entry("w1", 1), "initial");
    // The first observation still sees no entry (the KV echo has not arrived).
    m.observe(obs(10_000, { entries: { "demo.0": null, "demo.1": null } }));
    // A revoke and its hand-over are both issued before the next observation.
    write("demo.0", { ...entry("w1", 1, "revoking"), next: "w2" }, "rebalance");
    write("demo.0", entry("w2", 2), "released");
    m.observe(obs(11_000, { entries: { "demo.0": entry("w1", 1, "revoking"), "demo.1": null } }));
    m.observe(obs(12_000, { entries: { "demo.0": entry("w2", 2), "demo.1": null } }));
    expect(events.filter((e) => e.startsWith("assignment"))).toEqual([
      "assignment:demo.0 → w1 at epoch 1 (initial)",
      "assignment:demo.0: revoking from w1 at epoch 1 for w2 (rebalance)",
      "assignment:demo.0 → w2 at epoch 2 (released)",
    ]);
  });

  it("on a standby, derives losses from heartbeat age and moves from the entries", () => {
    const events: string[] = [];
    const m = new DashboardModel({
      self: "c2",
      shards,
      failureTimeoutMs: 1000,
      onEvent: (e) => events.push(`${e.type}:${e.text}`),
    });
    m.observe(obs(10_000, { leader: { holder: "c1", term: 1 } }));
    events.length = 0;
    m.observe(
      obs(12_000, {
        leader: { holder: "c2", term: 2 },
        members: { w1: member(12_000), w2: member(10_500) },
        entries: { "demo.0": entry("w1", 1), "demo.1": entry("w1", 2) },
      }),
    );
    expect(events).toEqual([
      "leader:c2 is leader (term 2), was c1",
      "member-lost:w2 lost: no heartbeat for 1500 ms",
      "assignment:demo.1 → w1 at epoch 2 (observed)",
    ]);
    // It comes back: a restarted worker heartbeats again.
    events.length = 0;
    m.observe(obs(13_000, { members: { w1: member(13_000), w2: member(13_000) } }));
    expect(events).toContain("member-joined:w2 rejoined");
  });
});
