import { afterEach, describe, expect, it } from "vitest";
import { countCommitted } from "../../nodes/cli/verify.js";
import { waitUntil } from "../../nodes/cli/wait.js";
import { startTestCluster, type TestCluster, waitSettled } from "./harness.js";

describe("coordinator failover (real 3-node NATS cluster)", () => {
  let tc: TestCluster | undefined;
  afterEach(async () => {
    await tc?.stop();
    tc = undefined;
  });

  it("SIGKILL of the leader: workers keep committing, the standby takes over and acts", async () => {
    tc = await startTestCluster({ workers: 3, coordinators: 2, secured: true });
    const s0 = await waitSettled(tc);
    const leader = s0.leader!;
    const standby = leader.holder === "c1" ? "c2" : "c1";
    const load = tc.load(12_000, 2_000);
    await tc.waitCommitted(2_000);

    const pid = tc.file().coordinators.find((c) => c.id === leader.holder)!.pid;
    const killedAt = Date.now();
    const committedAtKill = await countCommitted(tc.sink, "demo");
    process.kill(pid, "SIGKILL");

    const s1 = await waitUntil("a new leader", 15_000, async () => {
      const s = await tc!.status();
      return s.leader && s.leader.holder === standby ? s : undefined;
    });
    expect(s1.leader!.term).toBeGreaterThan(leader.term);
    expect(Date.now() - killedAt).toBeLessThan(15_000);
    // Workers kept processing their shards while there was no leader.
    expect(await countCommitted(tc.sink, "demo")).toBeGreaterThan(committedAtKill);

    // The new leader acts: a worker failure is handled by it.
    process.kill(tc.workerPid("w3"), "SIGKILL");
    await waitSettled(tc, 20_000, ["w1", "w2"]);
    expect(tc.logOf(standby)).toMatch(/"reason":"failure"/);

    const summary = await load.done;
    await tc.waitCommitted(summary.acked);
    const report = await tc.verify(load.ackLog);
    expect(report).toMatchObject({ lost: 0, duplicated: 0, unexpected: 0, acknowledged: summary.acked });
  });
});
