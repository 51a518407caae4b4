/**
 * The audit stream on a real secured 3-node cluster (each role with its own permissions): the
 * config provisioned by `sluice up`, a schema registration, reference-table writes, and the fences
 * of a SIGKILLed worker's shards by the worker that takes them, read back with `sluice audit`.
 */
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitUntil } from "../../nodes/cli/wait.js";
import { readAudit, type StoredAudit } from "../../shared/adapters/nats/audit-log.js";
import { configRevision, parseConfig } from "../../shared/contract/config.js";
import { startTestCluster, type TestCluster, testConfig, waitSettled } from "./harness.js";

const run = promisify(execFile);
const MAIN = join(import.meta.dirname, "../../dist/nodes/cli/main.js");

const base = testConfig();
// Few shards: every fence is an entry, and the test reads them all.
const cfg = parseConfig({
  pipelines: [{ name: "demo", shards: 4 }],
  timing: base.timing,
  worker: base.worker,
});

let cluster: TestCluster | undefined;
beforeAll(async () => {
  cluster = await startTestCluster({ workers: 2, coordinators: 1, config: cfg, secured: true });
}, 120_000);
afterAll(async () => {
  await cluster?.stop();
});

/** Runs `sluice …` against the test cluster: exit status, stdout, stderr. */
async function sluice(...args: string[]): Promise<{ status: number; out: string; err: string }> {
  try {
    const r = await run(process.execPath, [MAIN, ...args, "--dir", cluster!.dir], { timeout: 30_000 });
    return { status: 0, out: r.stdout, err: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { status: x.code, out: x.stdout, err: x.stderr };
  }
}

describe("sluice audit", () => {
  it("records config, schema and reference changes and every fence, with who and before/after", async () => {
    const tc = cluster!;
    const settled = await waitSettled(tc, 30_000);
    const held = settled.shards
      .filter((s) => s.owner === "w1")
      .map((s) => ({ shard: s.shard, epoch: s.epoch }));
    expect(held.length).toBeGreaterThan(0);

    const schemaFile = join(tc.dir, "orders.json");
    writeFileSync(schemaFile, JSON.stringify({ type: "object", properties: { n: { type: "number" } } }));
    expect(await sluice("schema", "register", "--subject", "orders", "--file", schemaFile)).toMatchObject({
      status: 0,
    });
    // Registering the same schema again changes nothing: no entry.
    expect((await sluice("schema", "register", "--subject", "orders", "--file", schemaFile)).status).toBe(0);
    expect(
      await sluice("ref", "put", "--table", "customers", "--key", "c1", "--value", '{"n":1}'),
    ).toMatchObject({ status: 0, err: "" });
    expect(
      (await sluice("ref", "put", "--table", "customers", "--key", "c1", "--value", '{"n":2}')).status,
    ).toBe(0);

    // w1 dies: w2 takes its shards at higher epochs, fencing the sink at each.
    process.kill(tc.workerPid("w1"), "SIGKILL");
    // Startup moves count too (w1 joined first, then handed shards to w2): match on epochs.
    const fenceOf = (entries: StoredAudit[], h: { shard: string; epoch: number }) =>
      entries.find(
        (e) =>
          e.kind === "fence" &&
          `${e.target.pipeline}.${e.target.shard}` === h.shard &&
          e.who.id === "w2" &&
          e.after.epoch > h.epoch,
      );
    const fences = await waitUntil(
      "w2's fences of w1's shards in the audit stream",
      30_000,
      async () => {
        const f = await readAudit(tc.nc, { kinds: ["fence"] });
        return held.every((h) => fenceOf(f, h)) ? f : undefined;
      },
      250,
    );

    const r = await sluice("audit", "--json");
    expect(r).toMatchObject({ status: 0, err: "" });
    const all = JSON.parse(r.out) as StoredAudit[];
    const seqs = all.map((e) => e.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));

    const config = all.filter((e) => e.kind === "config");
    expect(config).toEqual([
      expect.objectContaining({
        target: { pipeline: "demo" },
        before: null,
        after: { hash: configRevision(tc.cfg.pipelines[0]!) },
        who: expect.objectContaining({ role: "admin" }),
      }),
    ]);

    const schema = all.filter((e) => e.kind === "schema");
    expect(schema).toHaveLength(1);
    expect(schema[0]).toMatchObject({
      target: { subject: "orders" },
      before: null,
      after: { version: 1, compat: "BACKWARD" },
      // The admin's credentials of the secured cluster.
      who: { role: "admin", user: expect.any(String), id: expect.stringMatching(/^cli:/) },
    });

    const ref = all.filter((e) => e.kind === "ref");
    expect(ref).toHaveLength(2);
    expect(ref[0]).toMatchObject({ target: { table: "customers", key: "c1" }, before: null });
    expect(ref[1]).toMatchObject({
      target: { table: "customers", key: "c1" },
      before: { revision: (ref[0] as { after: { revision: number } }).after.revision },
    });

    // Every shard of w1: fenced by w2 above the epoch w1 held it at.
    for (const h of held) {
      expect(fenceOf(fences, h), `fence of ${h.shard}`).toMatchObject({
        target: { pipeline: "demo" },
        who: { role: "worker", id: "w2" },
        before: { epoch: h.epoch, owner: "w1" },
      });
      expect(fenceOf(all, h)).toEqual(fenceOf(fences, h));
    }
    // The first fences at startup too: every shard has one.
    const fenced = new Set(
      all.filter((e) => e.kind === "fence").map((e) => e.kind === "fence" && e.target.shard),
    );
    expect(fenced.size).toBe(4);

    // Text: one line per entry, filtered by kind and limited to the last ones.
    const text = await sluice("audit", "--kind", "ref", "--limit", "1");
    expect(text.status).toBe(0);
    const lines = text.out.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\dT.*Z +cli:\S+ .*ref +customers\/c1 +revision \d+ -> \d+$/);
  }, 90_000);
});
