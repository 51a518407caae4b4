import { afterEach, describe, expect, it } from "vitest";
import { measureFailover } from "../../nodes/cli/failover.js";
import { waitUntil } from "../../nodes/cli/wait.js";
import { startTestCluster, type TestCluster, waitSettled } from "./harness.js";

describe("worker faults under load (real 3-node NATS cluster)", () => {
  let tc: TestCluster | undefined;
  afterEach(async () => {
    await tc?.stop();
    tc = undefined;
  });

  it("SIGKILL of a worker: its shards move at the next epoch and commit elsewhere, exactly once", async () => {
    tc = await startTestCluster({ workers: 3 });
    const before = await waitSettled(tc);
    const victimShards = before.shards.filter((r) => r.owner === "w1");
    expect(victimShards.length).toBeGreaterThan(0);
    const load = tc.load(12_000, 2_000);
    await tc.waitCommitted(3_000);

    const killedAt = Date.now();
    process.kill(tc.workerPid("w1"), "SIGKILL");
    const after = await waitSettled(tc, 20_000, ["w2", "w3"]);
    for (const r of victimShards) {
      const now = after.shards.find((x) => x.shard === r.shard)!;
      expect(now.epoch).toBeGreaterThan(r.epoch);
    }

    const summary = await load.done;
    await tc.waitCommitted(summary.acked);
    const f = measureFailover(
      tc.file().sink,
      "demo",
      victimShards.map((r) => Number(r.shard.split(".")[1])),
      "w1",
      killedAt,
    );
    expect(f.maxMs).not.toBeNull();
    expect(f.maxMs!).toBeLessThan(10_000);
    const report = tc.verify(load.ackLog);
    expect(report).toMatchObject({ lost: 0, duplicated: 0, unexpected: 0, acknowledged: summary.acked });
  });

  it("SIGSTOP longer than the lease, then SIGCONT: the paused worker is fenced, nothing duplicated", async () => {
    tc = await startTestCluster({ workers: 3 });
    const before = await waitSettled(tc);
    const paused = before.shards.filter((r) => r.owner === "w1");
    const load = tc.load(12_000, 2_000);
    await tc.waitCommitted(3_000);

    const pid = tc.workerPid("w1");
    process.kill(pid, "SIGSTOP");
    try {
      // While w1 is frozen, its shards move to w2/w3 at a higher epoch and commit there.
      const moved = await waitSettled(tc, 20_000, ["w2", "w3"]);
      for (const r of paused) {
        expect(moved.shards.find((x) => x.shard === r.shard)!.epoch).toBeGreaterThan(r.epoch);
      }
      const committedWhilePaused = (await tc.status()).shards;
      expect(committedWhilePaused.length).toBe(16);
    } finally {
      process.kill(pid, "SIGCONT");
    }
    // On waking, w1 re-checks its leases before committing and finds them lost.
    await waitUntil("w1 to give up its stale leases", 20_000, () =>
      /"msg":"lease fenced"/.test(tc!.logOf("w1")) ? true : undefined,
    );
    // w1 rejoins and gets a fair share back through graceful hand-offs.
    await waitSettled(tc, 30_000);

    const summary = await load.done;
    await tc.waitCommitted(summary.acked);
    const report = tc.verify(load.ackLog);
    expect(report).toMatchObject({ lost: 0, duplicated: 0, unexpected: 0, acknowledged: summary.acked });
    expect(report.rows).toBe(summary.acked);
  });
});
