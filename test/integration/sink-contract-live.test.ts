/**
 * The sink contract suite (`test/kit/sink-contract.ts`) against the sinks that need a real
 * server: PostgreSQL (a private server of this file) and the JetStream output stream (a real
 * 3-node NATS cluster).
 */

import { mkdtempSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstreamManager, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import pg, { type Pool } from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { postgresUrl, socketDirFor, startPostgres, stopPostgres } from "../../nodes/cli/postgres-server.js";
import { JetStreamOutputInspector } from "../../shared/adapters/nats/jetstream-output-inspector.js";
import { JetStreamOutputStore } from "../../shared/adapters/nats/jetstream-output-store.js";
import { OutputStreamSink } from "../../shared/adapters/sink/output-stream-sink.js";
import { PostgresSinkInspector } from "../../shared/adapters/sink/postgres-inspector.js";
import { postgresPool } from "../../shared/adapters/sink/postgres-pool.js";
import { PostgresSink } from "../../shared/adapters/sink/postgres-sink.js";
import { parseConfig } from "../../shared/contract/config.js";
import { outputStream, outputSubjects } from "../../shared/contract/wire.js";
import { freePort } from "../kit/free-port.js";
import { reconcileScenario } from "../kit/merge-scenarios.js";
import { startTestPostgres, type TestPostgres } from "../kit/postgres.js";
import { sinkContract } from "../kit/sink-contract.js";
import { startTestCluster, type TestCluster } from "./harness.js";

let pgServer: TestPostgres | undefined;
let nats: TestCluster | undefined;
beforeAll(async () => {
  pgServer = await startTestPostgres();
  nats = await startTestCluster({ workers: 0, coordinators: 0 });
}, 120_000);
afterAll(async () => {
  await nats?.stop();
  await pgServer?.stop();
});

{
  let db = 0;
  let url = "";
  const pools: Pool[] = [];
  const pool = (): Pool => {
    const p = postgresPool(parseConfig({ sink: { type: "postgres", url } }).sink as never, { max: 4 });
    pools.push(p);
    return p;
  };
  const sink = (): PostgresSink =>
    new PostgresSink(pool(), {
      pipelines: [{ name: "demo" }, { name: "orders" }],
      statementTimeoutMs: 5_000,
      idleInTransactionTimeoutMs: 2_000,
    });
  sinkContract("PostgresSink", {
    dedupes: true,
    audits: true,
    open: async () => {
      url = await pgServer!.newDatabase(`contract_${++db}`);
      return sink();
    },
    again: async () => sink(),
    inspector: async () => new PostgresSinkInspector(pool()),
    cleanUp: async () => {
      for (const p of pools.splice(0)) await p.end().catch(() => undefined);
    },
  });
}

describe("PostgresSink: late records reconciled into a merge", () => {
  it("leaves the merge's table as the policy over every record; a second run changes nothing", async () => {
    const url = await pgServer!.newDatabase("reconcile_late");
    const pool = postgresPool(parseConfig({ sink: { type: "postgres", url } }).sink as never, { max: 2 });
    const inspectorPool = postgresPool(parseConfig({ sink: { type: "postgres", url } }).sink as never, {
      max: 1,
    });
    try {
      await reconcileScenario(
        new PostgresSink(pool, { pipelines: [{ name: "crm" }, { name: "billing" }] }),
        new PostgresSinkInspector(inspectorPool),
      );
    } finally {
      await pool.end();
      await inspectorPool.end();
    }
  });
});

describe("startPostgres", () => {
  it("refuses a port that another PostgreSQL server answers on, rather than use its data", async () => {
    const dir = mkdtempSync(join(tmpdir(), "sluice-pg-taken-"));
    try {
      await expect(
        startPostgres({ dataDir: join(dir, "data"), port: pgServer!.server.port, log: join(dir, "pg.log") }),
      ).rejects.toMatchObject({
        code: "CLUSTER_FAILURE",
        message: expect.stringMatching(/is taken by another PostgreSQL server/),
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);

  it("names its Unix socket in the URL it gives, with TCP beside it; a data directory too deep for a socket path gets TCP only", async () => {
    expect(pgServer!.server.url).toMatch(/^postgres:\/\/sluice@127\.0\.0\.1:\d+\/sluice\?host=%2F/);
    const viaSocket = new pg.Client({ connectionString: pgServer!.server.url });
    await viaSocket.connect();
    try {
      // A Unix-socket connection has no client address.
      const r = await viaSocket.query<{ addr: string | null; dir: string }>(
        "SELECT inet_client_addr()::text AS addr, current_setting('data_directory') AS dir",
      );
      expect(r.rows[0]).toEqual({ addr: null, dir: realpathSync(pgServer!.server.dataDir) });
    } finally {
      await viaSocket.end();
    }
    expect(socketDirFor("/tmp/d", 5432)).toBe("/tmp/d");
    expect(socketDirFor("/tmp/with space", 5432)).toBeNull();
    const dir = mkdtempSync(join(tmpdir(), "sluice-pg-deep-"));
    const dataDir = join(dir, "d".repeat(100));
    expect(socketDirFor(dataDir, 5432)).toBeNull();
    const port = await freePort();
    const deep = await startPostgres({ dataDir, port, log: join(dir, "pg.log") });
    try {
      expect(deep.url).toBe(postgresUrl(port));
      const viaTcp = new pg.Client({ connectionString: deep.url });
      await viaTcp.connect();
      await expect(viaTcp.query("SELECT 1 AS one")).resolves.toMatchObject({ rows: [{ one: 1 }] });
      await viaTcp.end();
    } finally {
      await stopPostgres(deep.pid);
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});

describe("PostgresSink: a writer frozen inside its transaction", () => {
  it("loses the transaction and its row lock after idleInTransactionTimeoutMs; the next owner fences at once", async () => {
    const url = await pgServer!.newDatabase("frozen_writer");
    const cfg = parseConfig({ sink: { type: "postgres", url } }).sink as never;
    const pools = [postgresPool(cfg, { max: 2 }), postgresPool(cfg, { max: 2 })];
    const opts = { pipelines: [{ name: "demo" }], idleInTransactionTimeoutMs: 300 };
    const [zombie, next] = pools.map((p) => new PostgresSink(p, opts)) as [PostgresSink, PostgresSink];
    const ref = { pipeline: "demo", shard: 3 };
    try {
      await zombie.fence(ref, 1);
      // The zombie's transaction takes the shard's row lock, then its process stops answering
      // (as a SIGSTOPped or GC-frozen worker does) for 3 s before its next statement.
      type Tx = {
        tx(what: string, fn: (t: { simple(q: string): Promise<unknown> }) => Promise<void>): Promise<void>;
      };
      const frozen = (zombie as unknown as Tx).tx("commit", async (t) => {
        await t.simple(
          "SELECT epoch FROM sluice_checkpoints WHERE pipeline = 'demo' AND shard = 3 FOR UPDATE",
        );
        await new Promise((r) => setTimeout(r, 3_000));
        await t.simple("SELECT 1");
      });
      const failed = frozen.then(
        () => null,
        (err: unknown) => err,
      );
      await new Promise((r) => setTimeout(r, 100));
      const t0 = Date.now();
      expect(await next.fence(ref, 2)).toMatchObject({ epoch: 2 });
      // Bounded by the timeout (0.3 s), not by the freeze (3 s).
      expect(Date.now() - t0).toBeLessThan(2_000);
      expect(await failed).toMatchObject({ code: "UNAVAILABLE", retryable: true });
      await expect(zombie.commit(ref, 1, "w1", [], 5)).rejects.toMatchObject({ code: "FENCED" });
    } finally {
      for (const p of pools) await p.end().catch(() => undefined);
    }
  });
});

describe("PostgresSink: group commit", () => {
  it("shares one transaction among shards' concurrent commits; a shard whose rows fail the statement fails alone", async () => {
    const url = await pgServer!.newDatabase("group_commit");
    const pool = postgresPool(parseConfig({ sink: { type: "postgres", url } }).sink as never, { max: 4 });
    const sink = new PostgresSink(pool, { pipelines: [{ name: "demo" }] });
    const refs = Array.from({ length: 8 }, (_, shard) => ({ pipeline: "demo", shard }));
    const rows = (shard: number, from: number, bad = false) =>
      Array.from({ length: 5 }, (_, i) => ({
        recordId: `s${shard}-${from + i}`,
        // PostgreSQL's text cannot hold NUL: the statement fails, and no retry can cure it.
        key: bad && i === 2 ? "k\u0000" : `k${shard}-${from + i}`,
        sourceSeq: from + i,
        value: { shard, i },
      }));
    const commitAll = (from: number, bad = -1) =>
      Promise.allSettled(
        refs.map((r) => sink.commit(r, 1, "w1", rows(r.shard, from, r.shard === bad), from + 4)),
      );
    try {
      for (const r of refs) await sink.fence(r, 1);
      for (const res of await commitAll(1))
        expect(res).toMatchObject({ status: "fulfilled", value: { committed: 5 } });
      // Rows one transaction wrote carry its id (xmin): eight shards' commits, fewer transactions.
      const tx = await pool.query<{ txs: string }>("SELECT count(DISTINCT xmin::text) AS txs FROM demo");
      expect(Number(tx.rows[0]!.txs)).toBeLessThan(8);
      for (const [i, res] of (await commitAll(6, 6)).entries()) {
        if (i === 6) expect(res).toMatchObject({ status: "rejected", reason: { retryable: false } });
        else expect(res).toMatchObject({ status: "fulfilled", value: { committed: 5 } });
      }
      expect(await sink.checkpoint(refs[6]!)).toEqual({ epoch: 1, seq: 5 });
      expect((await pool.query("SELECT 1 FROM demo WHERE shard = 6")).rowCount).toBe(5);
      // The shard's rows mended, it commits; the others' redelivery writes nothing twice.
      const again = await commitAll(6);
      expect(again.map((r) => (r.status === "fulfilled" ? r.value.committed : r.reason))).toEqual([
        0, 0, 0, 0, 0, 0, 5, 0,
      ]);
      expect((await pool.query("SELECT 1 FROM demo")).rowCount).toBe(80);
    } finally {
      await sink.close();
      await pool.end().catch(() => undefined);
    }
  });
});

describe("PostgresSink: a transaction's rows beyond maxStatementChars", () => {
  it("go in several statements of the same transaction, in order, in both table modes", async () => {
    const url = await pgServer!.newDatabase("statement_chars");
    const pool = postgresPool(parseConfig({ sink: { type: "postgres", url } }).sink as never, { max: 2 });
    // Counts the row inserts every pooled connection sends.
    let inserts = 0;
    pool.on("connect", (client) => {
      const query = client.query.bind(client) as (...a: unknown[]) => unknown;
      (client as unknown as { query: (...a: unknown[]) => unknown }).query = (...a: unknown[]) => {
        const text = typeof a[0] === "string" ? a[0] : (a[0] as { text?: string } | undefined)?.text;
        if (text?.includes("jsonb_to_recordset")) inserts++;
        return query(...a);
      };
    });
    const sink = new PostgresSink(pool, {
      pipelines: [{ name: "demo" }, { name: "latest", mode: "upsert" }],
      maxStatementChars: 2_000,
    });
    const rows = (from: number, n: number) =>
      Array.from({ length: n }, (_, i) => ({
        recordId: `r-${from + i}`,
        // Upsert: 40 keys, each written twice in one batch; the newer version wins.
        key: `k${(from + i) % 40}`,
        sourceSeq: from + i,
        value: { n: from + i, body: "x".repeat(40) },
      }));
    try {
      for (const pipeline of ["demo", "latest"]) await sink.fence({ pipeline, shard: 0 }, 1);
      await expect(
        sink.commit({ pipeline: "demo", shard: 0 }, 1, "w1", rows(1, 80), 80),
      ).resolves.toMatchObject({
        committed: 80,
      });
      expect(inserts).toBeGreaterThan(3);
      const demo = await pool.query<{ source_seq: string; tx: string }>(
        "SELECT source_seq, xmin::text AS tx FROM demo ORDER BY row_id",
      );
      expect(demo.rows.map((r) => Number(r.source_seq))).toEqual(Array.from({ length: 80 }, (_, i) => i + 1));
      expect(new Set(demo.rows.map((r) => r.tx)).size, "one transaction").toBe(1);
      inserts = 0;
      await sink.commit({ pipeline: "latest", shard: 0 }, 1, "w1", rows(1, 80), 80);
      expect(inserts).toBeGreaterThan(1);
      const latest = await pool.query<{ key: string; source_seq: string }>(
        "SELECT key, source_seq FROM latest",
      );
      expect(latest.rowCount).toBe(40);
      for (const r of latest.rows) expect(Number(r.source_seq)).toBeGreaterThan(40);
      expect(await sink.checkpoint({ pipeline: "latest", shard: 0 })).toEqual({ epoch: 1, seq: 80 });
    } finally {
      await sink.close();
      await pool.end().catch(() => undefined);
    }
  });
});

{
  const pipelines = [
    { name: "demo", shards: 10 },
    { name: "orders", shards: 4 },
  ];
  sinkContract("OutputStreamSink on JetStream", {
    open: async () => {
      const jsm = await jetstreamManager(nats!.nc);
      for (const p of pipelines) {
        await jsm.streams.delete(outputStream(p.name)).catch(() => undefined);
        await jsm.streams.add({
          name: outputStream(p.name),
          subjects: [outputSubjects(p.name)],
          num_replicas: 3,
          storage: StorageType.File,
          retention: RetentionPolicy.Limits,
          allow_atomic: true,
        });
      }
      return new OutputStreamSink(new JetStreamOutputStore(nats!.nc));
    },
    again: async () => new OutputStreamSink(new JetStreamOutputStore(nats!.nc)),
    inspector: async () => new JetStreamOutputInspector(nats!.nc, pipelines),
    cleanUp: async () => {},
  });
}
