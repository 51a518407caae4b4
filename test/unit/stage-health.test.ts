/** What `status` and the dashboard show of the stages: waiting shards and rule counts over workers. */
import { describe, expect, it } from "vitest";
import { formatStageHealth, stageHealth } from "../../shared/core/stage-health.js";

describe("stage health", () => {
  const members = {
    w1: {
      waiting: { "orders.3": { since: 1_000, reason: 'schema subject "orders" is not registered' } },
      rules: { "orders.qty_positive": { checked: 10, rejected: 2, shadowed: 0 } },
    },
    w2: {
      rules: {
        "orders.qty_positive": { checked: 5, rejected: 1, shadowed: 0 },
        "orders.note": { checked: 5, rejected: 0, shadowed: 4 },
      },
    },
    w3: {},
  };

  it("sums each rule over the live workers and lists the waiting shards with their reason", () => {
    const h = stageHealth(members, 3_500);
    expect(h.rules).toEqual({
      "orders.qty_positive": { checked: 15, rejected: 3, shadowed: 0 },
      "orders.note": { checked: 5, rejected: 0, shadowed: 4 },
    });
    expect(h.waiting).toEqual({
      "orders.3": { worker: "w1", sinceMsAgo: 2_500, reason: 'schema subject "orders" is not registered' },
    });
    const lines = formatStageHealth(h);
    expect(lines[0]).toBe("waiting (1 shard(s) hold their records):");
    expect(lines[1]).toContain('orders.3     on w1: 2.5 s, schema subject "orders" is not registered');
    expect(lines.some((l) => /^orders\.qty_positive\s+15\s+3\s+0$/.test(l))).toBe(true);
  });

  it("says nothing when no stage waits and no rule is configured", () => {
    expect(formatStageHealth(stageHealth({ w1: {} }, 0))).toEqual([]);
  });
});
