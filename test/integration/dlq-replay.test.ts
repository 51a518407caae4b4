/**
 * `sluice dlq list|show|replay` on a real 3-node NATS cluster with workers committing to the
 * demo pipeline's append-only table, where a record committed twice shows as a second row.
 *
 * Replayable dead letters are written as a stage would leave them (`JetStreamDeadLetterQueue`,
 * code UNAVAILABLE, valid CBOR or JSON), next to real ones the decode stage produces. The input
 * stream's duplicate window is cut to 1 s, so every replay here runs beyond it: only the replay
 * markers, not JetStream's deduplication, can keep an entry from being published twice.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { jetstream, jetstreamManager, type StoredMsg } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { nanos, headers as natsHeaders } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitUntil } from "../../nodes/cli/wait.js";
import type { ReplayMarker, ReplayReport } from "../../shared/adapters/nats/dead-letter-store.js";
import { JetStreamDeadLetterQueue } from "../../shared/adapters/nats/jetstream-dead-letter-queue.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import { parseConfig } from "../../shared/contract/config.js";
import { Buckets, deadLetterStream, Headers, shardOf } from "../../shared/contract/wire.js";
import { startTestCluster, type TestCluster, testConfig, waitSettled } from "./harness.js";

const run = promisify(execFile);
const MAIN = new URL("../../dist/nodes/cli/main.js", import.meta.url).pathname;
const INPUT = "SLUICE_IN_demo";
const DLQ = deadLetterStream("demo");
const enc = new TextEncoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let tc: TestCluster | undefined;
beforeAll(async () => {
  // `ps` keeps each shard in a stream of its own: a replay finds the stream of its shard.
  const base = testConfig();
  const config = parseConfig({
    ...base,
    pipelines: [...base.pipelines, { name: "ps", shards: 4, streams: "per-shard" }],
  });
  tc = await startTestCluster({ workers: 2, coordinators: 1, config });
  await waitSettled(tc);
}, 120_000);
afterAll(async () => {
  await tc?.stop();
});

/** Runs `sluice dlq …` against the test cluster: exit status, stdout, stderr. */
async function dlq(...args: string[]): Promise<{ status: number; out: string; err: string }> {
  try {
    const r = await run(process.execPath, [MAIN, "dlq", ...args, "--dir", tc!.dir], { timeout: 60_000 });
    return { status: 0, out: r.stdout, err: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { status: x.code, out: x.stdout, err: x.stderr };
  }
}

async function replay(...args: string[]): Promise<ReplayReport> {
  const pipeline = args.includes("--pipeline") ? [] : ["--pipeline", "demo"];
  const r = await dlq("replay", ...pipeline, "--json", ...args);
  expect(r.err).toBe("");
  expect(r.status).toBe(0);
  const reports = JSON.parse(r.out) as ReplayReport[];
  expect(reports).toHaveLength(1);
  return reports[0]!;
}

const KEYS = ["k0", "k1", "k2", "k3", "k4", "k5"];
/** The replayable dead letters: r-i, two per key; r-11 is JSON. */
const crafted = Array.from({ length: 12 }, (_, i) => ({
  id: `r-${i}`,
  key: KEYS[i % KEYS.length]!,
  json: i === 11,
  data: i === 11 ? enc.encode(`{"n":${i}}`) : encodeRecord({ n: i }),
}));

describe("sluice dlq (real 3-node NATS cluster)", () => {
  /** r-i -> its sequence in the dead-letter stream. */
  const dlqSeq = new Map<string, number>();

  it("sluice up provisions the marker bucket; replay makes it on a cluster that lacks it", async () => {
    const kvm = new Kvm(tc!.nc);
    const kv = await kvm.open(Buckets.dlqReplays);
    expect((await kv.status()).replicas).toBe(3);
    const jsm = await jetstreamManager(tc!.nc);
    await jsm.streams.delete(`KV_${Buckets.dlqReplays}`);
    const none = await replay("--code", "NO_SUCH_CODE");
    expect(none).toMatchObject({ matched: 0, replayed: 0, alreadyReplayed: 0 });
    expect((await (await kvm.open(Buckets.dlqReplays)).status()).replicas).toBe(3);
  });

  it("lists dead letters by code with a sample, and shows one in full", async () => {
    const nc = tc!.nc;
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    // Every replay in this file runs beyond the input stream's duplicate window.
    const si = await jsm.streams.info(INPUT);
    await jsm.streams.update(INPUT, { ...si.config, duplicate_window: nanos(1_000) });

    for (let i = 0; i < 10; i++) {
      await js.publish(`ingest.demo.${KEYS[i % KEYS.length]}`, encodeRecord({ good: i }), {
        msgID: `good-${i}`,
      });
    }
    // Real dead letters of the decode stage: two undecodable, one without an id.
    await js.publish("ingest.demo.alice", new Uint8Array([0xff, 0xfe, 0x00, 0x13]), { msgID: "bad-0" });
    await js.publish("ingest.demo.alice", new Uint8Array([0xff, 0xfe, 0x00, 0x14]), { msgID: "bad-1" });
    await js.publish("ingest.demo.alice", encodeRecord({ noId: true }));
    await waitUntil("3 dead letters", 30_000, async () =>
      (await jsm.streams.info(DLQ)).state.messages >= 3 ? true : undefined,
    );

    // Records a stage rejected for a passing reason: replayable. One at a time, so the stream
    // numbers them in this order.
    const queue = new JetStreamDeadLetterQueue(nc);
    for (const [i, r] of crafted.entries()) {
      const shard = shardOf(r.key, 16);
      await queue.publish([
        {
          ref: { pipeline: "demo", shard },
          seq: 1_000_000 + i,
          code: "UNAVAILABLE",
          message: "lookup service timed out",
          stage: "enrich",
          subject: `sluice.in.demo.${shard}.${r.key}`,
          data: r.data,
          headers: {
            [Headers.msgId]: r.id,
            "X-Trace": `t-${i}`,
            ...(r.json ? { [Headers.contentType]: "application/json" } : {}),
          },
        },
      ]);
    }
    const first = (await jsm.streams.info(DLQ)).state.last_seq - crafted.length + 1;
    for (const [i, r] of crafted.entries()) {
      const m = await jsm.streams.getMessage(DLQ, { seq: first + i });
      expect(m?.header.get(Headers.originalMsgId)).toBe(r.id);
      dlqSeq.set(r.id, first + i);
    }
    // r-0 dead-lettered a second time, as a worker that met it again after the dead-letter
    // stream's duplicate window would: the same stored record, a new entry.
    const r0 = (await jsm.streams.getMessage(DLQ, { seq: dlqSeq.get("r-0")! }))!;
    const h = natsHeaders();
    for (const [k, v] of r0.header) if (k !== Headers.msgId) h.set(k, v[0]!);
    await js.publish(r0.subject, r0.data, { headers: h, msgID: "dlq-again" });

    const list = await dlq("list", "--json");
    expect(list.status).toBe(0);
    const [summary, ps] = JSON.parse(list.out) as Array<{
      pipeline: string;
      total: number;
      byCode: Record<string, number>;
      sample: Array<Record<string, unknown>>;
    }>;
    expect(summary).toMatchObject({
      pipeline: "demo",
      total: 16,
      byCode: { UNAVAILABLE: 13, UNDECODABLE_PAYLOAD: 2, MISSING_ID: 1 },
    });
    expect(ps).toMatchObject({ pipeline: "ps", total: 0, byCode: {}, sample: [] });
    expect(Object.keys(summary!.byCode)[0]).toBe("UNAVAILABLE");
    expect(summary!.sample).toHaveLength(5);

    const only = JSON.parse(
      (await dlq("list", "--code", "UNDECODABLE_PAYLOAD", "--sample", "3", "--json")).out,
    );
    expect(only[0].total).toBe(2);
    expect(only[0].byCode).toEqual({ UNDECODABLE_PAYLOAD: 2 });
    expect(only[0].sample.map((e: { recordId: string }) => e.recordId)).toEqual(["bad-0", "bad-1"]);
    expect(only[0].sample[0]).toMatchObject({
      code: "UNDECODABLE_PAYLOAD",
      stage: "decode",
      shard: shardOf("alice", 16),
      key: "alice",
    });
    expect(only[0].sample[0].sourceSeq).toBeGreaterThan(0);
    expect(JSON.parse((await dlq("list", "--since", "2099-01-01", "--json")).out)[0].total).toBe(0);

    const text = await dlq("list", "--pipeline", "demo", "--code", "UNAVAILABLE");
    expect(text.out).toContain("demo (SLUICE_DLQ_demo): 13 dead letters with code UNAVAILABLE");
    expect(text.out).toMatch(/UNAVAILABLE\s+13/);
    expect(text.out).toContain("lookup service timed out");

    const show = await dlq("show", "--seq", String(dlqSeq.get("r-3")), "--pipeline", "demo");
    expect(show.status).toBe(0);
    const shown = JSON.parse(show.out);
    expect(shown).toMatchObject({
      pipeline: "demo",
      seq: dlqSeq.get("r-3"),
      code: "UNAVAILABLE",
      stage: "enrich",
      key: "k3",
      recordId: "r-3",
      sourceSeq: 1_000_003,
      payloadFormat: "cbor",
      payload: { n: 3 },
      replay: null,
    });
    expect(shown.headers).toMatchObject({ "X-Trace": "t-3", [Headers.errorCode]: "UNAVAILABLE" });
    const json = JSON.parse(
      (await dlq("show", "--seq", String(dlqSeq.get("r-11")), "--pipeline", "demo")).out,
    );
    expect(json).toMatchObject({ payloadFormat: "json", payload: { n: 11 } });
    const garbage = JSON.parse((await dlq("show", "--seq", "1", "--pipeline", "demo")).out);
    expect(garbage).toMatchObject({
      payloadFormat: "bytes",
      payloadHex: "fffe0013",
      payloadBase64: "//4AEw==",
    });
    const missing = await dlq("show", "--seq", "999", "--pipeline", "demo");
    expect(missing.status).toBe(1);
    expect(missing.err).toContain("no dead letter 999");
    const which = await dlq("show", "--seq", "1");
    expect(which.status).toBe(1);
    expect(which.err).toContain("several pipelines (demo, ps): name one with --pipeline");
  });

  it("replays each entry once with its original id, across a crashed run and repeated runs", async () => {
    const nc = tc!.nc;
    const js = jetstream(nc);
    const jsm = await jetstreamManager(nc);
    const markers = await new Kvm(nc).open(Buckets.dlqReplays);
    const put = (seq: number, m: ReplayMarker) => markers.create(`demo.${seq}`, JSON.stringify(m));

    // A run that crashed after claiming r-1 and publishing it, and after claiming r-2 only.
    const inputSeq = (await jsm.streams.info(INPUT)).state.last_seq;
    for (const id of ["r-1", "r-2"]) {
      const r = crafted.find((x) => x.id === id)!;
      const seq = dlqSeq.get(id)!;
      await put(seq, {
        state: "claimed",
        inputSeq,
        stream: INPUT,
        subject: `sluice.in.demo.${shardOf(r.key, 16)}.${r.key}`,
        msgId: `replay-demo-${seq}`,
        recordId: id,
        at: new Date().toISOString(),
      });
    }
    const r1 = crafted[1]!;
    const h = natsHeaders();
    h.set("X-Trace", "t-1");
    h.set(Headers.recordId, "r-1");
    h.set(Headers.msgId, `replay-demo-${dlqSeq.get("r-1")}`);
    await js.publish(`ingest.demo.${r1.key}`, r1.data, { headers: h });
    await sleep(1_500); // past the duplicate window

    expect(await replay("--code", "UNAVAILABLE", "--since", "2099-01-01T00:00:00Z")).toMatchObject({
      matched: 0,
      replayed: 0,
    });
    const first = await replay("--code", "UNAVAILABLE");
    // r-1 was found in the input stream; r-2 and the other ten were published; r-0's second
    // dead letter was left out.
    expect(first).toMatchObject({
      matched: 13,
      replayed: 11,
      alreadyReplayed: 1,
      duplicates: 1,
      unreplayable: [],
    });

    await sleep(1_500);
    expect(await replay("--code", "UNAVAILABLE", "--since", "1h")).toMatchObject({
      matched: 13,
      replayed: 0,
      alreadyReplayed: 12,
      duplicates: 1,
    });
    const text = await dlq("replay", "--pipeline", "demo", "--code", "UNAVAILABLE");
    expect(text.out.trim()).toBe(
      "demo: 13 matching, replayed 0, skipped 12 already replayed, skipped 1 duplicate dead letters",
    );
    // A record that had no id cannot be replayed as itself.
    const noId = await replay("--code", "MISSING_ID");
    expect(noId).toMatchObject({ matched: 1, replayed: 0 });
    expect(noId.unreplayable[0]?.reason).toContain("no record id");

    // Every replay is in the input stream once, with the record's own headers and its id.
    for (const r of crafted) {
      const seq = dlqSeq.get(r.id)!;
      const marker = JSON.parse((await markers.get(`demo.${seq}`))!.string()) as ReplayMarker;
      expect(marker).toMatchObject({ state: "done", stream: INPUT, recordId: r.id });
      const stored: StoredMsg = (await jsm.streams.getMessage(INPUT, {
        seq: (marker as { seq: number }).seq,
      }))!;
      expect(stored.header.get(Headers.msgId)).toBe(`replay-demo-${seq}`);
      expect(stored.header.get(Headers.recordId)).toBe(r.id);
      expect(stored.header.get("X-Trace")).toBe(`t-${r.id.slice(2)}`);
      expect(Buffer.from(stored.data).equals(Buffer.from(r.data))).toBe(true);
    }
    // 10 good records, 3 bad ones, and one replay per entry: nothing was stored twice.
    expect((await jsm.streams.info(INPUT)).state.messages).toBe(10 + 3 + crafted.length);

    // Committed: each good record and each replayed record exactly once, under its own id.
    const expected = [...Array.from({ length: 10 }, (_, i) => `good-${i}`), ...crafted.map((r) => r.id)];
    await tc!.waitCommitted(expected.length);
    await waitUntil("every shard drained", 30_000, async () => {
      const s = await tc!.status();
      return s.shards.every((x) => x.lag === 0) ? true : undefined;
    });
    const shown = JSON.parse(
      (await dlq("show", "--seq", String(dlqSeq.get("r-1")), "--pipeline", "demo")).out,
    );
    expect(shown.replay).toMatchObject({ state: "done", recordId: "r-1" });
    const rows = await tc!.sink.rows("demo", { values: true });
    const ids = rows.map((r) => r.recordId).sort();
    expect(ids).toEqual([...expected].sort());
    expect(rows.find((r) => r.recordId === "r-11")?.value).toEqual({ n: 11 });
    expect(rows.find((r) => r.recordId === "r-4")?.value).toEqual({ n: 4 });
    expect(rows.some((r) => r.recordId.startsWith("replay-"))).toBe(false);
  });

  it("replays into a pipeline with a stream per shard, once", async () => {
    const queue = new JetStreamDeadLetterQueue(tc!.nc);
    const keys = ["a", "b", "c", "d", "e"];
    for (const [i, key] of keys.entries()) {
      const shard = shardOf(key, 4);
      await queue.publish([
        {
          ref: { pipeline: "ps", shard },
          seq: 7 + i,
          code: "UNAVAILABLE",
          message: "lookup service timed out",
          stage: "enrich",
          subject: `sluice.in.ps.${shard}.${key}`,
          data: encodeRecord({ key }),
          headers: { [Headers.msgId]: `ps-${key}` },
        },
      ]);
    }
    // Every pipeline with a dead-letter stream.
    const all = await dlq("replay", "--code", "UNAVAILABLE", "--json");
    expect(all.status).toBe(0);
    const reports = JSON.parse(all.out) as ReplayReport[];
    expect(reports.map((r) => r.pipeline)).toEqual(["demo", "ps"]);
    expect(reports[0]).toMatchObject({ matched: 13, replayed: 0, alreadyReplayed: 12 });
    expect(reports[1]).toMatchObject({ matched: 5, replayed: 5, alreadyReplayed: 0 });
    const again = await replay("--since", "10m", "--pipeline", "ps");
    expect(again).toMatchObject({ pipeline: "ps", matched: 5, replayed: 0, alreadyReplayed: 5 });
    await waitUntil("5 rows in ps", 30_000, async () =>
      (await tc!.sink.rowCount("ps")) >= 5 ? true : undefined,
    );
    await waitUntil("every shard drained", 30_000, async () => {
      const s = await tc!.status();
      return s.shards.every((x) => x.lag === 0) ? true : undefined;
    });
    const rows = await tc!.sink.rows("ps");
    expect(rows.map((r) => r.recordId).sort()).toEqual(keys.map((k) => `ps-${k}`));
    for (const r of rows) expect(r.shard).toBe(shardOf(r.key, 4));
  });
});
