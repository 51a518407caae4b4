/**
 * Reference tables on a real 3-node NATS cluster: `sluice ref load` (CSV and JSON lines), `put`
 * and `get`, and a worker's watch-fed cache, which sees updates without a round trip, answers as
 * of an older revision from its one-step history, and leaves the rest to the bucket.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitUntil } from "../../nodes/cli/wait.js";
import {
  JetStreamReferenceTables,
  openReferenceBucket,
  putReference,
  REF_HISTORY,
  readAsOf,
} from "../../shared/adapters/nats/reference-tables.js";
import { startTestCluster, type TestCluster } from "./harness.js";

const run = promisify(execFile);
const MAIN = join(import.meta.dirname, "../../dist/nodes/cli/main.js");

let cluster: TestCluster | undefined;
const files = mkdtempSync(join(tmpdir(), "sluice-refs-"));
const tables: JetStreamReferenceTables[] = [];
beforeAll(async () => {
  cluster = await startTestCluster({ workers: 0, coordinators: 0 });
}, 120_000);
afterAll(async () => {
  await Promise.all(tables.map((t) => t.close()));
  await cluster?.stop();
  rmSync(files, { recursive: true, force: true });
});

/** Runs `sluice ref …` against the test cluster: exit status, stdout, stderr. */
async function sluice(...args: string[]): Promise<{ status: number; out: string; err: string }> {
  try {
    const r = await run(process.execPath, [MAIN, "ref", ...args, "--dir", cluster!.dir], { timeout: 30_000 });
    return { status: 0, out: r.stdout, err: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { status: x.code, out: x.stdout, err: x.stderr };
  }
}

function file(name: string, text: string): string {
  const f = join(files, name);
  writeFileSync(f, text);
  return f;
}

/** A worker's view of the cluster's reference tables. */
function worker(): JetStreamReferenceTables {
  const t = new JetStreamReferenceTables(cluster!.nc, { retryMs: 100 });
  tables.push(t);
  return t;
}

describe("sluice ref", () => {
  it("loads a CSV, then a JSON lines file; a second load of the same rows writes nothing", async () => {
    const csv = file("customers.csv", 'customer_id,name,tier\nc1,Ada,gold\nc2,"Bob, Jr",silver\n');
    const first = await sluice("load", "--table", "customers", "--file", csv, "--key-field", "customer_id");
    expect(first).toMatchObject({ status: 0 });
    expect(first.out).toMatch(
      /table customers: 2 entries from .*customers\.csv: 2 added, 0 changed, 0 unchanged; revision 2/,
    );
    const again = await sluice("load", "--table", "customers", "--file", csv, "--key-field", "customer_id");
    expect(again.out).toContain("0 added, 0 changed, 2 unchanged");

    const jsonl = file(
      "products.jsonl",
      ['{"sku":"p-1","price":10}', '{"sku":"p-2","price":20}', "", '{"sku":7,"price":7}'].join("\n"),
    );
    const products = await sluice("load", "--table", "products", "--file", jsonl, "--key-field", "sku");
    expect(products.out).toContain("table products: 3 entries");
    const got = await sluice("get", "--table", "products", "--key", "7", "--json");
    expect(JSON.parse(got.out)).toEqual({
      table: "products",
      key: "7",
      revision: 3,
      value: { sku: 7, price: 7 },
    });

    // A changed row is a new revision of its key only.
    const changed = file("products2.jsonl", '{"sku":"p-1","price":11}\n{"sku":"p-2","price":20}\n');
    expect(
      (await sluice("load", "--table", "products", "--file", changed, "--key-field", "sku")).out,
    ).toContain("0 added, 1 changed, 1 unchanged; revision 4");
  });

  it("put and get, as of a revision too; a missing key, table or bad file exits 1", async () => {
    const put = await sluice(
      "put",
      "--table",
      "customers",
      "--key",
      "c1",
      "--value",
      '{"name":"Ada","tier":"platinum"}',
    );
    expect(put).toMatchObject({ status: 0 });
    const rev = Number(/at revision (\d+)/.exec(put.out)?.[1]);
    expect(rev).toBeGreaterThan(2);
    const get = await sluice("get", "--table", "customers", "--key", "c1");
    expect(get.out).toBe(`revision ${rev}\n${JSON.stringify({ name: "Ada", tier: "platinum" }, null, 2)}\n`);
    // As of revision 1 (what a row's lineage names): the CSV's row.
    const old = await sluice("get", "--table", "customers", "--key", "c1", "--as-of", "1", "--json");
    expect(JSON.parse(old.out)).toMatchObject({
      revision: 1,
      value: { customer_id: "c1", name: "Ada", tier: "gold" },
    });

    const none = await sluice("get", "--table", "customers", "--key", "nobody");
    expect(none.status).toBe(1);
    expect(none.err).toContain("table customers has no entry for nobody");
    const noTable = await sluice("get", "--table", "nothing", "--key", "c1");
    expect(noTable.status).toBe(1);
    expect(noTable.err).toContain('no reference table "nothing" (no KV bucket sluice_ref_nothing)');
    const bad = await sluice(
      "load",
      "--table",
      "customers",
      "--file",
      file("bad.jsonl", '{"id":"x"}\n{"name":1}\n'),
    );
    expect(bad.status).toBe(1);
    expect(bad.err).toContain("nothing was written, 1 bad row(s):\nline 2: id is absent");
    const badValue = await sluice("put", "--table", "customers", "--key", "c9", "--value", "{nope");
    expect(badValue.err).toContain("--value is not JSON");
  });

  it("makes the bucket replicated, with history and leader reads", async () => {
    const jsm = await jetstreamManager(cluster!.nc);
    const cfg = (await jsm.streams.info("KV_sluice_ref_customers")).config;
    expect(cfg.num_replicas).toBe(3);
    expect(cfg.max_msgs_per_subject).toBe(REF_HISTORY);
    expect(cfg.allow_direct).toBe(false);
  });
});

describe("a worker's reference table cache", () => {
  it("waits for a table whose bucket does not exist, and loads it once made", async () => {
    const w = worker();
    const t = w.table("late");
    await new Promise((r) => setTimeout(r, 300));
    expect(t.waiting()).toContain("no KV bucket sluice_ref_late");
    expect(t.waiting()).toContain("sluice ref load --table late");
    await sluice("put", "--table", "late", "--key", "k", "--value", "1");
    await t.ready();
    expect(t.waiting()).toBeNull();
    expect(t.lookup("k", t.revision())).toEqual({ value: 1, revision: 1 });
  });

  it("sees updates from the watch, answers as of an older revision, and leaves older ones to the bucket", async () => {
    const kv = (await openReferenceBucket(cluster!.nc, "accounts", { replicas: 3 }))!;
    await putReference(kv, "a1", { v: 1 });
    const r2 = await putReference(kv, "a2", { v: 1 });
    const w = worker();
    const t = w.table("accounts");
    await t.ready();
    expect(t.revision()).toBe(r2);
    // A snapshot entry: as of before it, only the writer's header says the key was new.
    expect(t.lookup("a2", r2 - 1)).toBeNull();

    const r3 = await putReference(kv, "a1", { v: 2 });
    const r4 = await putReference(kv, "a3", { v: 1 });
    await waitUntil("the watch to deliver", 10_000, async () => (t.revision() >= r4 ? true : undefined), 20);
    expect(t.lookup("a1", r4)).toEqual({ value: { v: 2 }, revision: r3 });
    expect(t.lookup("a1", r2)).toEqual({ value: { v: 1 }, revision: 1 });
    expect(t.lookup("a3", r3)).toBeNull();

    // A write that does not say what it replaced (another client): inferred from the watch's order.
    const r5 = await kv.put("a3", new TextEncoder().encode('{"v":2}'));
    await waitUntil("the watch to deliver", 10_000, async () => (t.revision() >= r5 ? true : undefined), 20);
    expect(t.lookup("a3", r4)).toEqual({ value: { v: 1 }, revision: r4 });

    // a1 rewritten again: as of r2 only the bucket still knows it.
    const r6 = await putReference(kv, "a1", { v: 3 });
    await waitUntil("the watch to deliver", 10_000, async () => (t.revision() >= r6 ? true : undefined), 20);
    expect(t.lookup("a1", r2)).toBeUndefined();
    expect(await t.resolve("a1", r2)).toEqual({ value: { v: 1 }, revision: 1 });
    expect(await t.resolve("a3", r3)).toBeNull();

    // A deletion by another client.
    await kv.delete("a2");
    const deleted = (
      await jetstreamManager(cluster!.nc).then((j) => j.streams.info("KV_sluice_ref_accounts"))
    ).state.last_seq;
    await waitUntil(
      "the watch to deliver",
      10_000,
      async () => (t.revision() >= deleted ? true : undefined),
      20,
    );
    expect(t.lookup("a2", deleted)).toBeNull();
    expect(t.lookup("a2", r2)).toEqual({ value: { v: 1 }, revision: r2 });

    // Another worker, loading the table now: its snapshot carries no earlier values, the bucket does.
    const other = worker().table("accounts");
    await other.ready();
    expect(other.revision()).toBe(deleted);
    expect(other.lookup("a1", r4)).toBeUndefined();
    expect(await other.resolve("a1", r4)).toEqual({ value: { v: 2 }, revision: r3 });
    expect(await other.resolve("a3", r3)).toBeNull();
    expect(await readAsOf(await jetstreamManager(cluster!.nc), "accounts", "a2", r2)).toEqual({
      value: { v: 1 },
      revision: r2,
    });
  });

  it("is one watch per table, shared by every lookup", async () => {
    const w = worker();
    expect(w.table("accounts")).toBe(w.table("accounts"));
    // The buckets the CLI made are KV buckets any client reads.
    const kv = await new Kvm(cluster!.nc).open("sluice_ref_customers");
    expect((await kv.get("c2"))?.json()).toEqual({ customer_id: "c2", name: "Bob, Jr", tier: "silver" });
  });
});
