/**
 * The compose stack (deploy/compose) as a user runs it: the images built here FROM scratch
 * (deploy/compose/build-images.sh, skipped when unchanged), secrets made by prepare.mjs into a
 * temporary directory, `docker-compose up -d` with host networking. Then 20,000 records from the
 * producer library as the `producer` user over TLS, a worker container killed mid-load, and the
 * exactly-once check read from PostgreSQL itself: every acknowledged record exactly once, nothing
 * else. Prometheus must be scraping the workers. Skips only when no Docker daemon can be started.
 */
import { execFile, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { NatsConnection } from "@nats-io/transport-node";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { dockerAvailable } from "../../nodes/cli/nats-containers.js";
import { waitUntil } from "../../nodes/cli/wait.js";
import { connectNats } from "../../shared/adapters/nats/connection.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import { Producer, type PublishResult } from "../../shared/producer/producer.js";
import { testConfig } from "./harness.js";

const run = promisify(execFile);
const root = join(import.meta.dirname, "../..");
const composeFile = join(root, "deploy", "compose", "docker-compose.yml");
const RECORDS = 20_000;
const CHUNK = 1_000;
/** The worker killed once this many records are acknowledged. */
const KILL_AFTER = 6_000;

/** A Docker daemon, started with deploy/docker/setup-docker.sh when none answers. */
async function ensureDocker(): Promise<boolean> {
  if (await dockerAvailable()) return true;
  spawnSync("bash", [join(root, "deploy", "docker", "setup-docker.sh")], {
    stdio: "ignore",
    timeout: 180_000,
  });
  return dockerAvailable();
}
const dockerReady = await ensureDocker();
if (!dockerReady)
  console.warn("compose.test: skipped, no Docker daemon could be started (deploy/docker/setup-docker.sh)");

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

/** A port base (prepare.mjs's layout) whose ports are all free, from 34222 on in steps of 20. */
async function freeComposeBase(): Promise<number> {
  for (let base = 34_222; base < 35_800; base += 20) {
    const ports = [0, 1, 2].flatMap((i) => [base + i, base + 2000 + i, base + 4000 + i]);
    ports.push(...[1, 2, 3, 4, 5].map((i) => base + 6000 + i), base + 6100, base + 6200);
    if ((await Promise.all(ports.map(portFree))).every(Boolean)) return base;
  }
  throw new Error("no free port range for the compose stack from 34222 on");
}

describe.skipIf(!dockerReady)("the compose stack (deploy/compose, host network)", () => {
  const project = `sluiceit${randomBytes(4).toString("hex")}`;
  let dir = "";
  let secrets = "";
  let env: Record<string, string> = {};
  let up = false;
  let nc: NatsConnection | undefined;
  let pool: pg.Pool | undefined;

  const compose = (...args: string[]) =>
    run(
      "docker-compose",
      ["-p", project, "-f", composeFile, "--env-file", join(secrets, "compose.env"), ...args],
      {
        timeout: 120_000,
        maxBuffer: 16 * 1024 * 1024,
      },
    );
  const http = (name: string) => `http://127.0.0.1:${env[name]}`;

  beforeAll(async () => {
    const built = spawnSync("bash", [join(root, "deploy", "compose", "build-images.sh")], {
      encoding: "utf8",
      timeout: 300_000,
    });
    expect(built.status, `build-images.sh: ${built.stderr}`).toBe(0);
    dir = mkdtempSync(join(tmpdir(), "sluice-it-compose-"));
    secrets = join(dir, "secrets");
    // The test timings (fast failover); prepare.mjs points the sink at the stack's PostgreSQL.
    writeFileSync(join(dir, "config.json"), JSON.stringify(testConfig()));
    const base = await freeComposeBase();
    const prepared = spawnSync(
      process.execPath,
      [
        join(root, "deploy", "compose", "prepare.mjs"),
        "--dir",
        secrets,
        "--port-base",
        String(base),
        "--config",
        join(dir, "config.json"),
      ],
      { encoding: "utf8", timeout: 60_000 },
    );
    expect(prepared.status, prepared.stderr).toBe(0);
    env = Object.fromEntries(
      readFileSync(join(secrets, "compose.env"), "utf8")
        .split("\n")
        .filter(Boolean)
        .map((l) => l.split("=", 2) as [string, string]),
    );
    up = true;
    await compose("up", "-d");
    const nodes = ["C1", "C2", "W1", "W2", "W3"].map((n) => `SLUICE_${n}_HTTP_PORT`);
    await Promise.all(
      nodes.map((n) =>
        waitUntil(
          `${n} /readyz`,
          90_000,
          async () => ((await fetch(`${http(n)}/readyz`).catch(() => null))?.ok ? true : undefined),
          250,
        ),
      ),
    );
    const creds = JSON.parse(readFileSync(join(secrets, "credentials", "producer.json"), "utf8"));
    nc = await connectNats({
      servers: env.SLUICE_NATS_URLS!.split(","),
      name: "compose-test-producer",
      auth: creds,
      tls: { caFile: join(secrets, "tls", "ca.pem") },
    });
    pool = new pg.Pool({
      host: "127.0.0.1",
      port: Number(env.SLUICE_POSTGRES_PORT),
      user: "sluice",
      database: "sluice",
      password: readFileSync(join(secrets, "postgres", "password"), "utf8").trim(),
      max: 2,
    });
  }, 420_000);

  afterAll(async () => {
    await nc?.close().catch(() => undefined);
    await pool?.end().catch(() => undefined);
    if (up) {
      const logs = await compose("logs", "--no-color", "--tail", "40").catch(() => null);
      if (logs && process.env.SLUICE_COMPOSE_LOGS) console.log(logs.stdout);
      await compose("down", "-v", "--timeout", "5").catch((e: Error) =>
        console.error(`compose down: ${e.message}`),
      );
    }
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 120_000);

  it("commits every record exactly once in PostgreSQL with a worker container killed mid-load", async () => {
    const producer = new Producer(nc!, "demo", { window: 1_024, retries: 5, timeoutMs: 5_000 });
    const results: PublishResult[] = [];
    const w2 = (await compose("ps", "-q", "w2")).stdout.trim();
    expect(w2).not.toBe("");
    let killed: Promise<unknown> | undefined;
    for (let start = 0; start < RECORDS; start += CHUNK) {
      const batch = Array.from({ length: CHUNK }, (_, j) => {
        const i = start + j;
        return { id: `compose-${i}`, key: `k${i % 97}`, data: encodeRecord({ n: i }) };
      });
      results.push(...(await producer.publishBatch(batch)));
      if (!killed && results.length >= KILL_AFTER) killed = run("docker", ["kill", w2]);
    }
    await killed;
    const acked = new Set(results.filter((r) => r.status === "acked").map((r) => r.id));
    expect(acked.size).toBe(RECORDS);

    let seen = 0;
    const committed = await waitUntil(
      `${RECORDS} rows in PostgreSQL`,
      90_000,
      async () => {
        const r = await pool!.query<{ n: string }>("SELECT count(*) AS n FROM demo").catch(() => null);
        seen = Number(r?.rows[0]?.n ?? 0);
        return seen >= RECORDS ? seen : undefined;
      },
      500,
    ).catch((err: Error) => {
      throw new Error(`${err.message} (${seen} rows; docker-compose logs: SLUICE_COMPOSE_LOGS=1)`);
    });
    // Give a straggler (a zombie's late commit) a moment to show up as a duplicate, then check.
    await new Promise((r) => setTimeout(r, 2_000));
    const rows = await pool!.query<{ record_id: string }>("SELECT record_id FROM demo");
    const ids = rows.rows.map((r) => r.record_id);
    const distinct = new Set(ids);
    expect(committed).toBe(RECORDS);
    expect(ids.length, "rows (duplicates if more than records)").toBe(RECORDS);
    expect(distinct.size).toBe(RECORDS);
    expect(
      [...acked].filter((id) => !distinct.has(id)),
      "lost",
    ).toEqual([]);
    expect(
      [...distinct].filter((id) => !acked.has(id)),
      "unexpected",
    ).toEqual([]);
    const wasKilled = await run("docker", ["inspect", "--format", "{{.RestartCount}} {{.State.Status}}", w2]);
    console.log(`compose.test: w2 after docker kill: restarts/status ${wasKilled.stdout.trim()}`);
  }, 240_000);

  it("has Prometheus scraping the workers", async () => {
    const up = await waitUntil(
      "a worker target up in Prometheus",
      30_000,
      async () => {
        const res = await fetch(`${http("SLUICE_PROMETHEUS_PORT")}/api/v1/targets`).catch(() => null);
        if (!res?.ok) return undefined;
        const body = (await res.json()) as {
          data: { activeTargets: Array<{ labels: { job: string }; health: string; scrapeUrl: string }> };
        };
        const workers = body.data.activeTargets.filter((t) => t.labels.job === "sluice-worker");
        const healthy = workers.filter((t) => t.health === "up");
        if (workers.length !== 3 || healthy.length === 0) return undefined;
        // A target's health is its last scrape's: the worker killed above may be restarting.
        for (const t of healthy) {
          const text = await fetch(t.scrapeUrl)
            .then((r) => (r.ok ? r.text() : null))
            .catch(() => null);
          if (text !== null) return { url: t.scrapeUrl, text };
        }
        return undefined;
      },
      1_000,
    );
    expect(up.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/metrics$/);
    expect(up.text).toMatch(/sluice_/);
  }, 60_000);
});
