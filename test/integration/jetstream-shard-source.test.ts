import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { afterEach, describe, expect, it } from "vitest";
import { waitUntil } from "../../nodes/cli/wait.js";
import { JetStreamShardSource } from "../../shared/adapters/nats/jetstream-shard-source.js";
import { consumerNames, listShardConsumers } from "../../shared/adapters/nats/shard-consumers.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import type { ShardFeed } from "../../shared/contract/ports.js";
import {
  consumerEpoch,
  consumerName,
  epochConsumer,
  ingestSubject,
  inputStream,
  shardFilter,
  shardOf,
} from "../../shared/contract/wire.js";
import { startTestCluster, type TestCluster } from "./harness.js";

/** A key that the partition maps to `shard`. */
function keyOfShard(shard: number, shards: number): string {
  for (let i = 0; ; i++) if (shardOf(`k${i}`, shards) === shard) return `k${i}`;
}

describe("JetStreamShardSource (real 3-node NATS cluster)", () => {
  let tc: TestCluster | undefined;
  afterEach(async () => {
    await tc?.stop();
    tc = undefined;
  });

  it("replaces an unused consumer of the same epoch that starts elsewhere, so the feed starts where asked", async () => {
    tc = await startTestCluster({ workers: 0, coordinators: 0 });
    const p = tc.cfg.pipelines[0]!;
    const js = jetstream(tc.nc);
    const jsm = await jetstreamManager(tc.nc);
    const stream = inputStream(p, 0);
    const seqs: number[] = [];
    for (let i = 1; i <= 10; i++) {
      const ack = await js.publish(ingestSubject(p.name, keyOfShard(0, p.shards)), encodeRecord({ i }), {
        msgID: `r${i}`,
      });
      seqs.push(ack.seq);
    }
    // Left by an earlier attempt at epoch 7 (or a hand-off prepared from an older checkpoint):
    // it has delivered nothing, but starts at the first record.
    await jsm.consumers.add(stream, {
      durable_name: consumerName(p.name, 0, 7),
      filter_subject: shardFilter(p.name, 0),
      ack_policy: AckPolicy.All,
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: seqs[0]!,
      num_replicas: 1,
    });

    const source = new JetStreamShardSource(tc.nc, {
      pipelines: tc.cfg.pipelines,
      maxAckPending: 100,
      ackWaitMs: 30_000,
      bufferMessages: 50,
    });
    const feed = await source.open({ pipeline: p.name, shard: 0 }, 7, { seq: seqs[4]! });
    try {
      const deadline = Date.now() + 10_000;
      let got: number[] = [];
      while (got.length < 6 && Date.now() < deadline) {
        got = got.concat((await feed.next(10, 500)).map((m) => m.seq));
      }
      expect(got).toEqual(seqs.slice(4));
    } finally {
      await feed.close();
    }
  });

  it("lists every epoch's consumer of a shard, so a lease's own is found beside a later one left behind", async () => {
    tc = await startTestCluster({ workers: 0, coordinators: 0 });
    const p = tc.cfg.pipelines[0]!;
    const jsm = await jetstreamManager(tc.nc);
    const stream = inputStream(p, 0);
    // The lease's consumer at epoch 2, and one of epoch 3 from a hand-off that was called off.
    for (const epoch of [2, 3])
      await jsm.consumers.add(stream, {
        durable_name: consumerName(p.name, 5, epoch),
        filter_subject: shardFilter(p.name, 5),
        ack_policy: AckPolicy.All,
        deliver_policy: DeliverPolicy.All,
        num_replicas: 1,
      });
    const listed = await listShardConsumers(tc.nc, jsm, p);
    expect([...listed.keys()].sort()).toEqual(
      [consumerName(p.name, 5, 2), consumerName(p.name, 5, 3)].sort(),
    );
    expect(epochConsumer(listed, p.name, 5, 2)?.name).toBe(consumerName(p.name, 5, 2));
  });

  it("keeps every consumer on the stream leader's server, and fails the feeds left behind when it moves", async () => {
    tc = await startTestCluster({ workers: 0, coordinators: 0 });
    const p = tc.cfg.pipelines[0]!;
    const jsm = await jetstreamManager(tc.nc);
    const stream = inputStream(p, 0);
    const offLeader = new Set<string>();
    const source = new JetStreamShardSource(tc.nc, {
      pipelines: tc.cfg.pipelines,
      maxAckPending: 100,
      ackWaitMs: 30_000,
      bufferMessages: 50,
      onStatus: (e) => {
        if (e.type === "placed_off_leader") offLeader.add(e.consumer);
      },
    });
    const shards = [0, 1, 2, 3, 4, 5, 6, 7];
    /**
     * Every consumer sits on `leader` unless it was reported kept on a follower after every
     * candidate missed; most land on the leader (at random, 8 would with probability (1/3)^8).
     */
    const expectHomed = async (epoch: number, leader: string | undefined): Promise<void> => {
      const at = await placements(epoch);
      for (const c of at) if (c.server !== leader) expect(offLeader.has(c.name)).toBe(true);
      expect(at.filter((c) => c.server === leader).length).toBeGreaterThanOrEqual(shards.length / 2);
    };
    /** Each shard's consumer at `epoch` and its server, once the candidates not kept are deleted. */
    const placements = async (epoch: number): Promise<Array<{ name: string; server?: string }>> => {
      const names = await waitUntil("the candidates not kept to be deleted", 10_000, async () => {
        const all = await consumerNames(tc!.nc, stream);
        const mine = shards.map((s) => all.filter((n) => consumerEpoch(p.name, s, n) === epoch));
        return mine.every((m) => m.length === 1) ? mine.map((m) => m[0]!) : undefined;
      });
      return Promise.all(
        names.map(async (name) => ({
          name,
          server: (await jsm.consumers.info(stream, name)).cluster?.leader,
        })),
      );
    };
    const feeds: ShardFeed[] = [];
    try {
      for (const s of shards) feeds.push(await source.open({ pipeline: p.name, shard: s }, 1, { seq: 1 }));
      const leader = (await jsm.streams.info(stream)).cluster?.leader;
      expect(leader).toBeDefined();
      await expectHomed(1, leader);
      const servers = (await placements(1)).map((c) => c.server);

      const r = await tc.nc.request(`$JS.API.STREAM.LEADER.STEPDOWN.${stream}`, "", { timeout: 10_000 });
      expect(r.json<{ success?: boolean }>().success).toBe(true);
      const moved = await waitUntil("a new stream leader", 10_000, async () => {
        const l = (await jsm.streams.info(stream)).cluster?.leader;
        return l && l !== leader ? l : undefined;
      });
      // Every feed not on the new leader's server fails (all of those on the old leader).
      const left = new Set(feeds.flatMap((_, i) => (servers[i] === moved ? [] : [i])));
      expect(left.size).toBeGreaterThanOrEqual(shards.length / 2);
      const errors = new Map<number, string>();
      await waitUntil(
        "every feed left behind to fail once the leader moved",
        10_000,
        async () => {
          for (const i of left)
            if (!errors.has(i)) await feeds[i]!.next(1, 10).catch((e: Error) => errors.set(i, e.message));
          return errors.size === left.size ? true : undefined;
        },
        50,
      );
      for (const m of errors.values()) expect(m).toContain(`stream leader moved to ${moved}`);

      for (const f of feeds.splice(0)) await f.close();
      for (const s of shards) feeds.push(await source.open({ pipeline: p.name, shard: s }, 2, { seq: 1 }));
      await expectHomed(2, moved);
    } finally {
      for (const f of feeds) await f.close();
    }
  });
});
