import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { parseConfig } from "../../shared/contract/config.js";
import {
  type BatchSizing,
  feedBufferMessages,
  MIN_SHARD_IN_FLIGHT,
  nextBatchLimit,
  shardFlow,
} from "../../shared/core/batch-size.js";

const s: BatchSizing = { min: 16, max: 1000, targetCommitMs: 100 };

describe("adaptive batch size", () => {
  it("halves the limit when a commit is slower than the target", () => {
    expect(nextBatchLimit(1000, { size: 1000, commitMs: 250, lag: 5000 }, s)).toBe(500);
    expect(nextBatchLimit(20, { size: 20, commitMs: 250, lag: 5000 }, s)).toBe(16);
  });

  it("doubles it while full batches commit fast and the shard is behind", () => {
    expect(nextBatchLimit(100, { size: 100, commitMs: 10, lag: 5000 }, s)).toBe(200);
    expect(nextBatchLimit(800, { size: 800, commitMs: 10, lag: 5000 }, s)).toBe(1000);
  });

  it("keeps it when the shard keeps up or the commit is neither fast nor slow", () => {
    expect(nextBatchLimit(100, { size: 40, commitMs: 10, lag: 0 }, s)).toBe(100);
    expect(nextBatchLimit(100, { size: 100, commitMs: 10, lag: 0 }, s)).toBe(100);
    expect(nextBatchLimit(100, { size: 100, commitMs: 80, lag: 5000 }, s)).toBe(100);
  });

  it("grows on a full batch when the source does not report lag", () => {
    expect(nextBatchLimit(100, { size: 100, commitMs: 10, lag: undefined }, s)).toBe(200);
  });

  it("converges: a sink whose commit time grows with the batch settles below the target", () => {
    // 0.3 ms per record: batches above ~333 records miss the 100 ms target.
    let limit = 1000;
    const seen: number[] = [];
    for (let i = 0; i < 50; i++) {
      limit = nextBatchLimit(limit, { size: limit, commitMs: limit * 0.3, lag: 1e6 }, s);
      seen.push(limit);
    }
    expect(Math.max(...seen.slice(10)) * 0.3).toBeLessThanOrEqual(s.targetCommitMs);
    expect(Math.min(...seen.slice(10))).toBeGreaterThanOrEqual(125);
  });

  it("always stays within [min, max]", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: -10, max: 5000 }),
        fc.integer({ min: 0, max: 5000 }),
        fc.double({ min: 0, max: 1000, noNaN: true }),
        fc.option(fc.integer({ min: 0, max: 1e6 }), { nil: undefined }),
        (limit, size, commitMs, lag) => {
          const n = nextBatchLimit(limit, { size, commitMs, lag }, s);
          expect(n).toBeGreaterThanOrEqual(s.min);
          expect(n).toBeLessThanOrEqual(s.max);
          expect(Number.isInteger(n)).toBe(true);
        },
      ),
    );
  });
});

describe("feed buffer", () => {
  it("keeps the pulled-ahead messages and the committing batch within maxAckPending", () => {
    expect(feedBufferMessages({ batchMax: 1000, maxAckPending: 4000 })).toBe(2000);
    expect(feedBufferMessages({ batchMax: 1000, maxAckPending: 2000 })).toBe(1000);
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 10_000 }),
        fc.integer({ min: 0, max: 40_000 }),
        (batchMax, extra) => {
          const maxAckPending = 2 * batchMax + extra;
          expect(feedBufferMessages({ batchMax, maxAckPending }) + batchMax).toBeLessThanOrEqual(
            maxAckPending,
          );
        },
      ),
    );
  });

  it("rejects a config whose maxAckPending is below twice batchMax", () => {
    expect(() => parseConfig({ worker: { batchMax: 1000, maxAckPending: 1500 } })).toThrow(/twice/);
  });
});

describe("shard flow: a worker's in-flight budget shared by its shards", () => {
  const w = { batchMax: 1000, maxAckPending: 4000, maxBufferedRecords: 65_536 };

  it("leaves a few shards at maxAckPending and shrinks many shards' shares to the budget", () => {
    expect(shardFlow(w, 16)).toEqual({ maxAckPending: 4000, batchMax: 1000, bufferMessages: 2000 });
    expect(shardFlow(w, 64)).toEqual({ maxAckPending: 1024, batchMax: 512, bufferMessages: 512 });
    expect(shardFlow(w, 0).maxAckPending).toBe(4000);
    expect(shardFlow(w, 100_000).maxAckPending).toBe(MIN_SHARD_IN_FLIGHT);
  });

  it("keeps every shard's batches within its share, and all shares within the budget or the floor", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 10_000 }),
        fc.integer({ min: 0, max: 40_000 }),
        fc.integer({ min: 64, max: 1_000_000 }),
        fc.integer({ min: 1, max: 5_000 }),
        (batchMax, extra, maxBufferedRecords, shards) => {
          const cfg = { batchMax, maxAckPending: 2 * batchMax + extra, maxBufferedRecords };
          const f = shardFlow(cfg, shards);
          expect(f.batchMax).toBeGreaterThanOrEqual(1);
          expect(f.batchMax).toBeLessThanOrEqual(batchMax);
          expect(f.maxAckPending).toBeLessThanOrEqual(cfg.maxAckPending);
          expect(f.bufferMessages + f.batchMax).toBeLessThanOrEqual(f.maxAckPending);
          expect(f.maxAckPending * shards).toBeLessThanOrEqual(
            Math.max(maxBufferedRecords, MIN_SHARD_IN_FLIGHT * shards),
          );
        },
      ),
    );
  });
});
