import { describe, expect, it } from "vitest";
import type { StatusReport } from "../../nodes/cli/status.js";
import { formatWatchFrame, progressOf, redraw } from "../../nodes/cli/status-watch.js";
import type { ShardConsumerInfo } from "../../shared/adapters/nats/shard-consumers.js";
import { type ProgressSample, shardRates } from "../../shared/core/shard-rates.js";

const sample = (at: number, shards: ProgressSample["shards"]): ProgressSample => ({ at, shards });

describe("shardRates", () => {
  it("has no rates on the first sample", () => {
    const r = shardRates(null, sample(1000, { "demo.0": { counter: "demo-s0-e1", count: 50 } }));
    expect(r).toEqual({ total: 0, perShard: { "demo.0": null } });
  });

  it("divides each shard's progress by the interval and sums the total", () => {
    const prev = sample(1000, {
      "demo.0": { counter: "demo-s0-e1", count: 100 },
      "demo.1": { counter: "demo-s1-e1", count: 40 },
    });
    const next = sample(3000, {
      "demo.0": { counter: "demo-s0-e1", count: 300 },
      "demo.1": { counter: "demo-s1-e1", count: 40 },
    });
    expect(shardRates(prev, next)).toEqual({ total: 100, perShard: { "demo.0": 100, "demo.1": 0 } });
  });

  it("counts a new epoch's consumer from zero", () => {
    const prev = sample(0, { "demo.0": { counter: "demo-s0-e1", count: 5_000 } });
    const next = sample(500, { "demo.0": { counter: "demo-s0-e2", count: 20 } });
    expect(shardRates(prev, next).perShard["demo.0"]).toBe(40);
  });

  it("counts a consumer that appeared, or restarted at the same epoch, from zero", () => {
    const prev = sample(0, { "demo.0": null, "demo.1": { counter: "demo-s1-e3", count: 900 } });
    const next = sample(1000, {
      "demo.0": { counter: "demo-s0-e1", count: 30 },
      "demo.1": { counter: "demo-s1-e3", count: 12 },
    });
    expect(shardRates(prev, next)).toEqual({ total: 42, perShard: { "demo.0": 30, "demo.1": 12 } });
  });

  it("reports 0 for a shard without a counter, and nothing for a zero or negative interval", () => {
    const prev = sample(1000, { "demo.0": { counter: "c", count: 1 } });
    expect(shardRates(prev, sample(2000, { "demo.0": null }))).toEqual({
      total: 0,
      perShard: { "demo.0": 0 },
    });
    expect(shardRates(prev, sample(1000, { "demo.0": { counter: "c", count: 9 } }))).toEqual({
      total: 0,
      perShard: { "demo.0": null },
    });
  });
});

describe("sluice status --watch frame", () => {
  const report: StatusReport = {
    sink: { reachable: true, error: null, trouble: {}, healthy: true },
    stages: { waiting: {}, rules: {} },
    merges: [],
    leader: { holder: "c1", term: 2 },
    view: {
      leader: "c1",
      term: 2,
      at: 0,
      members: {
        w1: { capacity: 1, lastSeenMsAgo: 12, leaving: false, heartbeatDelayMs: 1, held: 1 },
      },
    },
    shards: [
      {
        shard: "demo.0",
        owner: "w1",
        epoch: 3,
        phase: "active",
        next: null,
        committed: 1234,
        fencedEpoch: 3,
        lag: 7,
        duplicates: 0,
      },
      {
        shard: "demo.1",
        owner: null,
        epoch: 0,
        phase: "unassigned",
        next: null,
        committed: 0,
        fencedEpoch: 0,
        lag: null,
        duplicates: 0,
      },
    ],
  };

  it("takes each owner's consumer at the assigned epoch as the shard's counter", () => {
    const ci = (name: string, seq: number): ShardConsumerInfo => ({
      name,
      pending: 0,
      ackPending: 0,
      ackFloorStreamSeq: 0,
      ackFloorConsumerSeq: seq,
    });
    const consumers = new Map([
      [
        "demo",
        new Map([
          ["demo-s0-e2", ci("demo-s0-e2", 999)],
          ["demo-s0-e3", ci("demo-s0-e3", 55)],
        ]),
      ],
    ]);
    expect(progressOf(report, consumers, 42)).toEqual({
      at: 42,
      shards: { "demo.0": { counter: "demo-s0-e3", count: 55 }, "demo.1": null },
    });
  });

  it("shows records/s per shard and in total", () => {
    const frame = formatWatchFrame(
      report,
      { total: 250, perShard: { "demo.0": 250, "demo.1": null } },
      { at: new Date("2025-01-01T10:20:30Z"), intervalMs: 1000 },
    );
    expect(frame).toContain("10:20:30");
    expect(frame).toContain("leader: c1 (term 2)    throughput: 250 records/s    lag: 7");
    expect(frame).toMatch(/demo\.0\s+w1\s+3\s+active\s+1234\s+7\s+250$/m);
    expect(frame).toMatch(/demo\.1\s+-\s+0\s+unassigned\s+0\s+\?\s+-$/m);
  });

  it("redraws in place: cursor home, each line cleared to its end, the rest of the screen cleared", () => {
    expect(redraw("a\nb")).toBe("\x1b[Ha\x1b[K\nb\x1b[K\n\x1b[J");
  });
});
