import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { headers } from "@nats-io/transport-node";
import { encode } from "cbor-x";
import { afterEach, describe, expect, it } from "vitest";
import { isOurProcess } from "../../nodes/cli/cluster-file.js";
import { waitUntil } from "../../nodes/cli/wait.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import { deadLetterStream, shardOf } from "../../shared/contract/wire.js";
import { startTestCluster, type TestCluster, waitSettled } from "./harness.js";

describe("bad input (real 3-node NATS cluster)", () => {
  let tc: TestCluster | undefined;
  afterEach(async () => {
    await tc?.stop();
    tc = undefined;
  });

  it("dead-letters malformed records with code, bytes and headers; the shard keeps flowing", async () => {
    tc = await startTestCluster({ workers: 2, coordinators: 1 });
    await waitSettled(tc);
    const js = jetstream(tc.nc);
    const key = "alice"; // every record below goes to one shard, so bad ones sit between good ones
    // A key whose records belong to another shard than alice's.
    const otherKey = ["bob", "carol", "dave", "erin"].find((k) => shardOf(k, 16) !== shardOf(key, 16))!;
    // As any NATS client publishes: the key in the subject, no sluice header (an optional
    // Sluice-Key is only set where a case needs it).
    const h = (json = false, recordKey: string | null = null) => {
      const x = headers();
      if (json) x.set("Content-Type", "application/json");
      if (recordKey !== null) x.set("Sluice-Key", recordKey);
      return x;
    };
    const good = (i: number) =>
      js.publish(`ingest.demo.${key}`, encodeRecord({ n: i }), { msgID: `good-${i}`, headers: h() });
    const bad: Array<{
      code: string;
      data: Uint8Array;
      id?: string;
      json?: boolean;
      recordKey?: string | null;
    }> = [
      { code: "UNDECODABLE_PAYLOAD", data: new Uint8Array([0xff, 0xfe, 0x00, 0x13]), id: "bad-garbage" },
      {
        code: "UNDECODABLE_PAYLOAD",
        data: new TextEncoder().encode("{not json"),
        id: "bad-json",
        json: true,
      },
      { code: "NOT_A_MAP", data: encode([1, 2, 3]), id: "bad-array" },
      { code: "MISSING_ID", data: encodeRecord({ n: -1 }) },
      { code: "KEY_SHARD_MISMATCH", data: encodeRecord({ n: -3 }), id: "bad-key", recordKey: otherKey },
    ];
    for (let i = 0; i < 50; i++) await good(i);
    for (const b of bad) {
      await js.publish(`ingest.demo.${key}`, b.data, {
        headers: h(b.json, b.recordKey ?? null),
        ...(b.id ? { msgID: b.id } : {}),
      });
    }
    // JSON records are accepted too.
    await js.publish(`ingest.demo.${key}`, new TextEncoder().encode('{"n":"json"}'), {
      msgID: "good-json",
      headers: h(true),
    });
    for (let i = 50; i < 100; i++) await good(i);

    const jsm = await jetstreamManager(tc.nc);
    const dlq = await waitUntil(`${bad.length} dead letters`, 30_000, async () => {
      const si = await jsm.streams.info(deadLetterStream("demo"));
      return si.state.messages >= bad.length ? si : undefined;
    });
    expect(dlq.state.messages).toBe(bad.length);
    const stored = await Promise.all(
      bad.map((_, i) => jsm.streams.getMessage(deadLetterStream("demo"), { seq: i + 1 })),
    );
    const shard = shardOf(key, 16);
    for (const [i, b] of bad.entries()) {
      const m = stored[i]!;
      expect(m.subject).toBe(`sluice.dlq.demo.${shard}`);
      expect(m.header.get("Sluice-Error-Code")).toBe(b.code);
      expect(m.header.get("Sluice-Error")).not.toBe("");
      expect(m.header.get("Sluice-Source-Subject")).toBe(`sluice.in.demo.${shard}.${key}`);
      expect(m.header.get("Sluice-Error-Stage")).toBe("decode");
      expect(Number(m.header.get("Sluice-Source-Seq"))).toBeGreaterThan(0);
      expect(Buffer.from(m.data).equals(Buffer.from(b.data))).toBe(true);
      if (b.id) expect(m.header.get("Sluice-Original-Msg-Id")).toBe(b.id);
      if (b.json) expect(m.header.get("Content-Type")).toBe("application/json");
    }

    // Every good record after the bad ones was committed exactly once; the workers live on.
    await tc.waitCommitted(101);
    const rows = await tc.sink.rows("demo", { values: true });
    const ids = rows.map((r) => r.recordId);
    expect(ids).toHaveLength(101);
    expect(new Set(ids).size).toBe(101);
    expect(ids.some((id) => id.startsWith("bad"))).toBe(false);
    expect(rows.find((r) => r.recordId === "good-json")?.value).toEqual({ n: "json" });
    for (const w of tc.file().workers) expect(isOurProcess(w.pid, tc.dir)).toBe(true);
  });
});
