/**
 * The schema registry on a real 3-node NATS cluster: the `sluice_schemas` bucket that `sluice up`
 * provisions, the registry's rules through it, and the `sluice schema` commands against it.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { openSchemaRegistry } from "../../shared/adapters/nats/schema-store.js";
import { startTestCluster, type TestCluster } from "./harness.js";

const run = promisify(execFile);
const MAIN = join(import.meta.dirname, "../../dist/nodes/cli/main.js");

let cluster: TestCluster | undefined;
const files = mkdtempSync(join(tmpdir(), "sluice-schemas-"));
beforeAll(async () => {
  cluster = await startTestCluster({ workers: 0, coordinators: 0 });
}, 120_000);
afterAll(async () => {
  await cluster?.stop();
  rmSync(files, { recursive: true, force: true });
});

/** Runs `sluice schema …` against the test cluster: exit status, stdout, stderr. */
async function sluice(...args: string[]): Promise<{ status: number; out: string; err: string }> {
  try {
    const r = await run(process.execPath, [MAIN, "schema", ...args, "--dir", cluster!.dir], {
      timeout: 30_000,
    });
    return { status: 0, out: r.stdout, err: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { status: x.code, out: x.stdout, err: x.stderr };
  }
}

function schemaFile(name: string, schema: object): string {
  const f = join(files, name);
  writeFileSync(f, JSON.stringify(schema));
  return f;
}

const orders1 = {
  type: "object",
  properties: { id: { type: "string" }, amount: { type: "number" } },
  required: ["id", "amount"],
};
const orders2 = {
  ...orders1,
  properties: { ...orders1.properties, currency: { type: "string", default: "EUR" } },
  required: ["id", "amount", "currency"],
};
const orders3Bad = {
  ...orders2,
  properties: { ...orders2.properties, customer: { type: "string" } },
  required: ["id", "amount", "currency", "customer"],
};

describe("schema registry on NATS", () => {
  it("numbers versions per subject, hands out global ids, and returns an existing version for the same schema", async () => {
    const reg = await openSchemaRegistry(cluster!.nc, 3);
    const a = await reg.register("reg_a", orders1);
    const b = await reg.register("reg_a", orders2);
    expect([a.version, b.version]).toEqual([1, 2]);
    expect(b.id).toBeGreaterThan(a.id);
    // Key order does not make a new schema.
    const again = await reg.register("reg_a", {
      required: orders1.required,
      properties: orders1.properties,
      type: orders1.type,
    });
    expect(again).toMatchObject({ version: 1, id: a.id });
    expect((await reg.byId(b.id))?.schema).toEqual(orders2);
    const other = await reg.register("reg_b", orders1);
    expect(other.version).toBe(1);
    expect(other.id).not.toBe(a.id);
    expect((await reg.list()).map((s) => s.subject)).toEqual(expect.arrayContaining(["reg_a", "reg_b"]));
  });

  it("two registrations racing for a subject's next version get different versions and ids", async () => {
    const [r1, r2] = await Promise.all([
      openSchemaRegistry(cluster!.nc, 3),
      openSchemaRegistry(cluster!.nc, 3),
    ]);
    const s1 = { type: "object", properties: { a: { type: "string" } } };
    const s2 = { type: "object", properties: { a: { type: "string" }, b: { type: "number" } } };
    const [x, y] = await Promise.all([r1!.register("race", s1, "NONE"), r2!.register("race", s2, "NONE")]);
    expect(new Set([x.version, y.version])).toEqual(new Set([1, 2]));
    expect(x.id).not.toBe(y.id);
    expect((await r1!.subject("race"))?.versions).toHaveLength(2);
  });

  it("sluice schema register / check / list / show, with an incompatible schema refused by name", async () => {
    const reg1 = await sluice("register", "--subject", "orders", "--file", schemaFile("o1.json", orders1));
    expect(reg1).toMatchObject({ status: 0 });
    expect(reg1.out).toMatch(/subject orders: version 1, id \d+/);
    const reg2 = await sluice("register", "--subject", "orders", "--file", schemaFile("o2.json", orders2));
    expect(reg2.out).toMatch(/subject orders: version 2, id \d+/);

    const bad = schemaFile("o3.json", orders3Bad);
    const check = await sluice("check", "--subject", "orders", "--file", bad);
    expect(check.status).toBe(1);
    expect(check.err).toContain('field "customer": required in the new schema, absent from version 2');
    const refused = await sluice("register", "--subject", "orders", "--file", bad);
    expect(refused.status).toBe(1);
    expect(refused.err).toContain('field "customer": required in the new schema, absent from version 2');
    expect(refused.err).toContain("SCHEMA_INCOMPATIBLE");
    // Under NONE the same schema is accepted, and the subject keeps that mode.
    const forced = await sluice("register", "--subject", "orders", "--file", bad, "--compat", "none");
    expect(forced.out).toMatch(/version 3/);

    const list = await sluice("list", "--json");
    expect(JSON.parse(list.out)).toEqual(
      expect.arrayContaining([expect.objectContaining({ subject: "orders", compat: "NONE", latest: 3 })]),
    );
    const versions = await sluice("list", "--subject", "orders", "--json");
    expect(JSON.parse(versions.out).versions.map((v: { version: number }) => v.version)).toEqual([1, 2, 3]);
    const show = await sluice("show", "--subject", "orders", "--version", "2");
    expect(JSON.parse(show.out)).toMatchObject({ subject: "orders", version: 2, schema: orders2 });
    const missing = await sluice("show", "--subject", "orders", "--version", "9");
    expect(missing.status).toBe(1);
    expect(missing.err).toContain('no version 9 of subject "orders"');
  }, 120_000);
});
