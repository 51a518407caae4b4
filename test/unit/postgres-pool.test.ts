/** The PostgreSQL pool takes its password from the config's file or variable, never dropped. */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { postgresPool } from "../../shared/adapters/sink/postgres-pool.js";
import { parseConfig } from "../../shared/contract/config.js";

describe("postgresPool", () => {
  const dir = mkdtempSync(join(tmpdir(), "sluice-pgpool-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const sinkOf = (extra: Record<string, string>) => {
    const s = parseConfig({
      sink: { type: "postgres", url: "postgres://sluice@127.0.0.1:5432/db", ...extra },
    }).sink;
    if (s.type !== "postgres") throw new Error("not postgres");
    return s;
  };
  // What a pooled client would log in with.
  const clientOf = (pool: pg.Pool) =>
    new pg.Client((pool as unknown as { options: pg.ClientConfig }).options);

  it("hands the password file's first line to the client, beside a URL without a password", async () => {
    const file = join(dir, "pw");
    writeFileSync(file, "s3cr/et+=x\nignored\n");
    const pool = postgresPool(sinkOf({ passwordFile: file }));
    const c = clientOf(pool);
    expect([c.user, c.password, c.database, c.port]).toEqual(["sluice", "s3cr/et+=x", "db", 5432]);
    await pool.end();
  });

  it("takes the password from the named environment variable", async () => {
    process.env.SLUICE_TEST_PG_PASSWORD = "from-env";
    const pool = postgresPool(sinkOf({ passwordEnv: "SLUICE_TEST_PG_PASSWORD" }));
    expect(clientOf(pool).password).toBe("from-env");
    await pool.end();
    delete process.env.SLUICE_TEST_PG_PASSWORD;
  });
});
