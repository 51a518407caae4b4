/**
 * The producer library against a real 3-node cluster: what reaches the stream (headers,
 * subject, partition), deduplication of a re-sent id, per-batch confirmation in order, records
 * refused before sending, and the connection near the stream leader.
 */
import { jetstreamManager } from "@nats-io/jetstream";
import { afterEach, describe, expect, it } from "vitest";
import { connectForPublishing, connectNearPipelines } from "../../shared/adapters/nats/connection.js";
import { ErrorCode } from "../../shared/contract/errors.js";
import { Headers, inputStream, shardOf, shardSubject } from "../../shared/contract/wire.js";
import { type OutgoingRecord, Producer, type PublishResult } from "../../shared/producer/producer.js";
import { startTestCluster, type TestCluster } from "./harness.js";

describe("producer (real 3-node NATS cluster)", () => {
  let tc: TestCluster | undefined;
  afterEach(async () => {
    await tc?.stop();
    tc = undefined;
  });

  it("publishes near the stream leader with every header intact; a re-sent id is a duplicate; bad records are refused", async () => {
    tc = await startTestCluster({ workers: 0, coordinators: 0 });
    const p = tc.cfg.pipelines[0]!;
    const stream = inputStream(p, 0);
    const jsm = await jetstreamManager(tc.nc);
    const leader = (await jsm.streams.info(stream)).cluster?.leader;
    expect(leader).toBeDefined();

    const nc = await connectForPublishing({
      servers: tc.file().nats.map((n) => n.url),
      name: "producer-test",
      pipeline: p,
    });
    try {
      expect(nc.info?.server_name).toBe(leader);
      // A worker's data connection: near the first pipeline kept in one stream, past one whose
      // shards each have their own.
      const reader = await connectNearPipelines({
        servers: tc.file().nats.map((n) => n.url),
        name: "reader-test",
        pipelines: [{ name: "elsewhere", streams: "per-shard" }, p],
      });
      try {
        expect(reader.info?.server_name).toBe(leader);
      } finally {
        await reader.close();
      }
      const producer = new Producer(nc, p.name);
      const run = `t${Date.now().toString(36)}`;
      const records: OutgoingRecord[] = Array.from({ length: 50 }, (_, i) => ({
        id: `${run}-${i}`,
        key: `key-${i % 7}`,
        data: new TextEncoder().encode(`{"n":${i}}`),
        ...(i % 2 === 0 ? { contentType: "application/json" } : {}),
      }));

      // Per-batch confirmation: every result, in the order of the records.
      const results = await producer.publishBatch(records);
      expect(results.map((r) => r.id)).toEqual(records.map((r) => r.id));
      expect(results.every((r) => r.status === "acked" && r.stream === stream && !r.duplicate)).toBe(true);
      const seqs = results.map((r) => r.seq!);
      expect(new Set(seqs).size).toBe(records.length);

      // What the stream holds: the partitioned subject and the headers, byte for byte.
      for (const [i, r] of records.entries()) {
        const m = await jsm.streams.getMessage(stream, { seq: seqs[i]! });
        expect(m?.subject).toBe(shardSubject(p.name, shardOf(r.key, p.shards), r.key));
        expect(m?.header.get(Headers.msgId)).toBe(r.id);
        // The key travels in the subject only, as from any NATS client.
        expect(m?.header.get(Headers.key)).toBe("");
        expect(m?.header.get(Headers.contentType)).toBe(r.contentType ?? "");
        expect(new TextDecoder().decode(m?.data)).toBe(`{"n":${i}}`);
      }

      // A second send of the same ids (what a retry sends) is stored once: JetStream answers
      // with the first copy's sequence and `duplicate`.
      const again = await producer.publishBatch(records.slice(0, 5));
      expect(again.map((r) => [r.status, r.seq, r.duplicate])).toEqual(
        seqs.slice(0, 5).map((s) => ["acked", s, true]),
      );
      const before = (await jsm.streams.info(stream)).state.messages;

      // Records no header or subject can carry fail at once, with a reason, and are not sent.
      const bad: OutgoingRecord[] = [
        { id: `${run}-crlf\r\nX-Evil: 1`, key: "k", data: new Uint8Array(1) },
        { id: `${run}-dot`, key: "a.b", data: new Uint8Array(1) },
        { id: `${run}-space`, key: "a b", data: new Uint8Array(1) },
        { id: `${run}-empty`, key: "", data: new Uint8Array(1) },
        { id: "", key: "k", data: new Uint8Array(1) },
      ];
      const refused: PublishResult[] = [];
      for (const r of bad) expect(producer.offer(r, (res) => refused.push(res))).toBe(true);
      expect(refused.map((r) => [r.status, r.code])).toEqual(
        bad.map(() => ["failed", ErrorCode.InvalidRecord]),
      );
      expect(refused[1]!.error).toContain("not one subject token");
      expect(producer.inFlight).toBe(0);
      await producer.close();
      // A record offered to a closed producer fails at once instead of waiting forever.
      const late: PublishResult[] = [];
      expect(
        producer.offer({ id: `${run}-late`, key: "k", data: new Uint8Array(1) }, (res) => late.push(res)),
      ).toBe(true);
      expect(late.map((r) => [r.status, r.code])).toEqual([["failed", ErrorCode.Unavailable]]);
      expect(producer.inFlight).toBe(0);
      expect((await jsm.streams.info(stream)).state.messages).toBe(before);

      // Abandoned, a record still waiting for its PubAck is reported timed out at once. With its
      // stream deleted no PubAck comes, and it would otherwise wait out its re-sends.
      const waiting = new Producer(nc, p.name, { window: 16, retries: 5, timeoutMs: 60_000 });
      const abandoned: PublishResult[] = [];
      await jsm.streams.delete(stream);
      waiting.offer({ id: `${run}-abandoned`, key: "k", data: new Uint8Array(1) }, (res) =>
        abandoned.push(res),
      );
      expect(waiting.inFlight).toBe(1);
      waiting.abandon("test");
      expect(abandoned.map((r) => [r.id, r.status, r.error])).toEqual([
        [`${run}-abandoned`, "timeout", "test"],
      ]);
      expect(waiting.inFlight).toBe(0);
      await waiting.close();
    } finally {
      await nc.close();
    }
  });
});
