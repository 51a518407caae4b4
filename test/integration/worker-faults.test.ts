import { jetstreamManager } from "@nats-io/jetstream";
import Database from "better-sqlite3";
import { afterEach, describe, expect, it } from "vitest";
import { measureFailover } from "../../nodes/cli/failover.js";
import { waitUntil } from "../../nodes/cli/wait.js";
import { consumerNames } from "../../shared/adapters/nats/shard-consumers.js";
import { consumerEpoch, inputStream } from "../../shared/contract/wire.js";
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
    const f = await measureFailover(
      tc.sink,
      "demo",
      victimShards.map((r) => Number(r.shard.split(".")[1])),
      "w1",
      killedAt,
    );
    expect(f.maxMs).not.toBeNull();
    expect(f.maxMs!).toBeLessThan(10_000);
    const report = await tc.verify(load.ackLog);
    expect(report).toMatchObject({ lost: 0, duplicated: 0, unexpected: 0, acknowledged: summary.acked });
  });

  it("a stream whose history changed under a checkpoint: the new owner reconciles by record id", async () => {
    tc = await startTestCluster({ workers: 2 });
    const before = await waitSettled(tc);
    const load = tc.load(3_000, 3_000);
    const summary = await load.done;
    await tc.waitCommitted(summary.acked);
    const moved = before.shards.filter((r) => r.owner === "w1").map((r) => Number(r.shard.split(".")[1]));
    const shard = moved[0]!;
    // Make the sink look like it followed another history of this shard: the record at its
    // checkpoint was a different one, and two earlier records of this history sat beyond it
    // (so they were never committed). A worker trusting sequences alone would lose them.
    const db = new Database(tc.file().sqlite);
    let removed: string[];
    try {
      const rows = db
        .prepare(`SELECT row_id, record_id FROM demo WHERE shard = ? ORDER BY source_seq LIMIT 2 OFFSET 10`)
        .all(shard) as Array<{ row_id: number; record_id: string }>;
      removed = rows.map((r) => r.record_id);
      expect(removed).toHaveLength(2);
      const del = db.prepare("DELETE FROM demo WHERE row_id = ?");
      for (const r of rows) del.run(r.row_id);
      db.prepare(
        "UPDATE sluice_checkpoints SET fingerprint = 'another-history' WHERE pipeline = 'demo' AND shard = ?",
      ).run(shard);
    } finally {
      db.close();
    }
    expect((await tc.verify(load.ackLog)).lost).toBe(2);

    process.kill(tc.workerPid("w1"), "SIGKILL");
    await waitSettled(tc, 20_000, ["w2"]);
    await waitUntil("w2 to reconcile the shard", 20_000, () =>
      tc!.logOf("w2").includes("stream history changed under the checkpoint") ? true : undefined,
    );
    await tc.waitCommitted(summary.acked);
    const report = await tc.verify(load.ackLog);
    expect(report).toMatchObject({ lost: 0, duplicated: 0, unexpected: 0, acknowledged: summary.acked });
    expect(report.rows).toBe(summary.acked);
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
    const report = await tc.verify(load.ackLog);
    expect(report).toMatchObject({ lost: 0, duplicated: 0, unexpected: 0, acknowledged: summary.acked });
    expect(report.rows).toBe(summary.acked);
  });

  it("the stream leader moves under load: every shard's consumer follows it, exactly once and in order", async () => {
    tc = await startTestCluster({ workers: 2 });
    await waitSettled(tc);
    const p = tc.cfg.pipelines[0]!;
    const stream = inputStream(p, 0);
    const jsm = await jetstreamManager(tc.nc);
    const load = tc.load(10_000, 2_000);
    await tc.waitCommitted(1_000);
    /**
     * Servers of the shards' live consumers (from the KV's owners and epochs). An epoch's
     * candidates that were not kept are deleted in the background and may linger a while, so
     * the live one is the candidate with a pull waiting (else the one that delivered most).
     */
    const placements = async (): Promise<Array<{ name: string; server: string }>> => {
      const s = await tc!.status();
      const all = await consumerNames(tc!.nc, stream);
      return Promise.all(
        s.shards.map(async (r) => {
          const shard = Number(r.shard.split(".")[1]);
          const mine = all.filter((n) => consumerEpoch(p.name, shard, n) === r.epoch);
          const infos = (
            await Promise.all(mine.map((n) => jsm.consumers.info(stream, n).catch(() => null)))
          ).filter((ci) => ci !== null);
          infos.sort(
            (a, b) =>
              Number(b.num_waiting > 0) - Number(a.num_waiting > 0) ||
              b.delivered.stream_seq - a.delivered.stream_seq,
          );
          const live = infos[0];
          return { name: live?.name ?? "none", server: live?.cluster?.leader ?? "none" };
        }),
      );
    };
    /** A consumer kept on a follower after every candidate missed the leader, as the worker logged it. */
    const reportedOff = (name: string): boolean =>
      (tc!.logOf("w1") + tc!.logOf("w2"))
        .split("\n")
        .some((l) => l.includes('"placed_off_leader"') && l.includes(`"consumer":"${name}"`));
    for (let move = 1; move <= 2; move++) {
      const from = (await jsm.streams.info(stream)).cluster?.leader;
      const r = await tc.nc.request(`$JS.API.STREAM.LEADER.STEPDOWN.${stream}`, "", { timeout: 10_000 });
      expect(r.json<{ success?: boolean }>().success).toBe(true);
      const to = await waitUntil("a new stream leader", 10_000, async () => {
        const l = (await jsm.streams.info(stream)).cluster?.leader;
        return l && l !== from ? l : undefined;
      });
      let seen: Awaited<ReturnType<typeof placements>> = [];
      await waitUntil(`every shard consumer on ${to} (move ${move})`, 20_000, async () => {
        const at = await placements();
        seen = at;
        const home = at.filter((c) => c.server === to).length;
        return home >= at.length / 2 && at.every((c) => c.server === to || reportedOff(c.name))
          ? true
          : undefined;
      }).catch((err: unknown) => {
        throw new Error(`${(err as Error).message}: ${JSON.stringify(seen.filter((c) => c.server !== to))}`);
      });
    }
    expect(tc.logOf("w1") + tc.logOf("w2")).toContain("stream leader moved to");

    const summary = await load.done;
    await tc.waitCommitted(summary.acked);
    const report = await tc.verify(load.ackLog);
    expect(report).toMatchObject({
      lost: 0,
      duplicated: 0,
      unexpected: 0,
      order_violations: 0,
      acknowledged: summary.acked,
    });
  });
});
