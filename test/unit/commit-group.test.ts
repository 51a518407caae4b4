import { describe, expect, it } from "vitest";
import type { CommitOptions, SinkRow } from "../../shared/contract/ports.js";
import { goesAlone, takeGroup } from "../../shared/core/commit-group.js";

const row = (seq: number, extra: Partial<SinkRow> = {}): SinkRow => ({
  recordId: `id-${seq}`,
  key: `k${seq}`,
  sourceSeq: seq,
  value: { seq },
  ...extra,
});
const commit = (shard: number, rows = 1, opts: CommitOptions = {}, pipeline = "demo") => ({
  ref: { pipeline, shard },
  rows: Array.from({ length: rows }, (_, i) => row(i + 1)),
  opts,
});

describe("takeGroup: which waiting commits share the next PostgreSQL transaction", () => {
  it("takes every waiting shard once, oldest first, and leaves a shard's second commit waiting", () => {
    const w = [commit(1), commit(2), commit(1), commit(3, 1, {}, "orders"), commit(2)];
    const [a, b, c, d, e] = w;
    expect(takeGroup(w)).toEqual([a, b, d]);
    expect(w).toEqual([c, e]);
    expect(takeGroup(w)).toEqual([c, e]);
    expect(w).toEqual([]);
  });

  it("stops at 5,000 rows but always takes one commit, however large", () => {
    const w = [commit(1, 6_000), commit(2, 10)];
    expect(takeGroup(w).map((q) => q.ref.shard)).toEqual([1]);
    const v = [commit(1, 3_000), commit(2, 2_500), commit(3, 2_000)];
    expect(takeGroup(v).map((q) => q.ref.shard)).toEqual([1, 3]);
    expect(v.map((q) => q.ref.shard)).toEqual([2]);
  });

  it("sends a commit that locks dedupe marks or merge keys alone, so no two groups lock them in opposite orders", () => {
    const dedupe = commit(2, 1, { dedupeWindowMs: 60_000 });
    const merge = {
      ...commit(4),
      rows: [row(1, { merge: { into: "m", policy: "latest", eventTime: 1, priority: 0 } })],
    };
    expect(goesAlone(dedupe)).toBe(true);
    expect(goesAlone(merge)).toBe(true);
    expect(goesAlone(commit(1))).toBe(false);
    const w = [commit(1), dedupe, commit(3), merge, commit(5)];
    expect(takeGroup(w).map((q) => q.ref.shard)).toEqual([1, 3, 5]);
    expect(takeGroup(w)).toEqual([dedupe]);
    expect(takeGroup(w)).toEqual([merge]);
    expect(w).toEqual([]);
  });
});
