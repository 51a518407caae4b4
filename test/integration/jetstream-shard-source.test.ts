import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import { afterEach, describe, expect, it } from "vitest";
import { encodeRecord } from "../../shared/codec.js";
import { JetStreamShardSource } from "../../shared/nats/jetstream-shard-source.js";
import { consumerName, inputStream, shardFilter, shardSubject } from "../../shared/wire.js";
import { startTestCluster, type TestCluster } from "./harness.js";

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
      const ack = await js.publish(shardSubject(p.name, 0), encodeRecord({ i }), { msgID: `r${i}` });
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
});
