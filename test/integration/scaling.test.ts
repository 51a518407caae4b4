import { jetstreamManager } from "@nats-io/jetstream";
import { afterEach, describe, expect, it } from "vitest";
import { addWorker, removeWorker } from "../../nodes/cli/local-cluster.js";
import { parseConfig } from "../../shared/contract/config.js";
import { inputStream, keyOfSubject, shardOf } from "../../shared/contract/wire.js";
import { shardCounts, startTestCluster, type TestCluster, testConfig, waitSettled } from "./harness.js";

describe("scaling under load (real 3-node NATS cluster)", () => {
  let tc: TestCluster | undefined;
  afterEach(async () => {
    await tc?.stop();
    tc = undefined;
  });

  it("scales out 3 -> 4 and in 4 -> 3 with graceful hand-offs, exactly once", async () => {
    tc = await startTestCluster({ workers: 3 });
    const before = await waitSettled(tc, 30_000, ["w1", "w2", "w3"]);
    const epochsBefore = new Map(before.shards.map((r) => [r.shard, r.epoch]));
    const load = tc.load(16_000, 2_000);

    await tc.waitCommitted(2_000);
    addWorker(tc.dir, "w4");
    const out = await waitSettled(tc, 30_000, ["w1", "w2", "w3", "w4"]);
    const counts = shardCounts(out);
    expect(counts.get("w4")).toBe(4);
    expect(Math.max(...counts.values()) - Math.min(...counts.values())).toBeLessThanOrEqual(1);
    // Only the shards given to w4 moved: every other shard kept its epoch.
    const moved = out.shards.filter((r) => r.epoch !== epochsBefore.get(r.shard));
    const assigns = (tc.logOf("c1") + tc.logOf("c2"))
      .split("\n")
      .filter((l) => l.includes('"msg":"assign"') || l.includes('"msg":"member'));
    expect(
      moved.filter((r) => r.owner !== "w4"),
      `shards that moved off the plan; coordinator decisions:\n${assigns.join("\n")}`,
    ).toEqual([]);
    expect(moved).toHaveLength(4);
    // Graceful: the coordinator handed the shards over after their owners released them.
    expect(tc.logOf("c1") + tc.logOf("c2")).toMatch(/"reason":"released"/);

    await removeWorker(tc.dir, "w2");
    const inn = await waitSettled(tc, 30_000, ["w1", "w3", "w4"]);
    const after = shardCounts(inn);
    expect([...after.keys()].sort()).toEqual(["w1", "w3", "w4"]);
    expect(Math.max(...after.values()) - Math.min(...after.values())).toBeLessThanOrEqual(1);
    expect(tc.logOf("w2")).toMatch(/"msg":"lease released"/);
    expect(tc.logOf("w2")).not.toMatch(/"msg":"lease fenced"/);

    const summary = await load.done;
    expect(summary.acked).toBe(16_000);
    await tc.waitCommitted(summary.acked);
    const report = await tc.verify(load.ackLog);
    expect(report).toMatchObject({ lost: 0, duplicated: 0, unexpected: 0, acknowledged: 16_000 });
    expect(report.rows).toBe(16_000);
  });

  it("with one stream per shard: each stream holds its shard only; a join and a SIGKILL lose and duplicate nothing", async () => {
    const base = testConfig();
    const cfg = parseConfig({ ...base, pipelines: [{ name: "demo", shards: 8, streams: "per-shard" }] });
    tc = await startTestCluster({ workers: 3, config: cfg });
    await waitSettled(tc, 30_000, ["w1", "w2", "w3"]);
    const load = tc.load(12_000, 2_000);
    await tc.waitCommitted(2_000);
    addWorker(tc.dir, "w4");
    await waitSettled(tc, 30_000, ["w1", "w2", "w3", "w4"]);
    process.kill(tc.workerPid("w1"), "SIGKILL");
    await waitSettled(tc, 30_000, ["w2", "w3", "w4"]);

    const summary = await load.done;
    expect(summary.acked).toBe(12_000);
    await tc.waitCommitted(summary.acked);
    expect(await tc.verify(load.ackLog)).toMatchObject({
      lost: 0,
      duplicated: 0,
      unexpected: 0,
      acknowledged: 12_000,
    });
    const jsm = await jetstreamManager(tc.nc);
    const p = cfg.pipelines[0]!;
    let stored = 0;
    for (let shard = 0; shard < p.shards; shard++) {
      const info = await jsm.streams.info(inputStream(p, shard), { subjects_filter: ">" });
      stored += info.state.messages;
      // The shard's stream holds its own shard's keys only.
      const subjects = Object.keys(info.state.subjects ?? {});
      expect(subjects.length).toBeGreaterThan(0);
      for (const s of subjects) expect(s.startsWith(`sluice.in.demo.${shard}.`), s).toBe(true);
      expect(subjects.every((s) => shardOf(keyOfSubject(s), p.shards) === shard)).toBe(true);
    }
    expect(stored).toBe(12_000);
  });
});
