/**
 * Every sink, on a real cluster under load, with workers SIGKILLed and SIGSTOPped past their
 * lease: nothing lost, nothing written twice, read back from the database or stream itself. And
 * the PostgreSQL sink's own faults: the server stopped for 10 s, its connections killed, a
 * statement timeout. Shards stall and retry; `status` shows the sink unhealthy meanwhile.
 */
import { spawn } from "node:child_process";
import { join } from "node:path";
import pg from "pg";
import { type Browser, chromium } from "playwright-core";
import { afterEach, describe, expect, it } from "vitest";
import { waitUntil } from "../../nodes/cli/wait.js";
import { parseConfig } from "../../shared/contract/config.js";
import { CHROMIUM } from "../kit/chromium.js";
import { startTestCluster, type TestCluster, testConfig, waitSettled } from "./harness.js";

const root = join(import.meta.dirname, "../..");

/** Runs a chaos script against the cluster; resolves with its exit code. */
function chaos(script: string, dir: string, seconds: number): Promise<number> {
  return new Promise((resolve) => {
    const p = spawn(
      "bash",
      [join(root, "chaos", `${script}.sh`), "--dir", dir, "--duration", String(seconds)],
      {
        stdio: "ignore",
      },
    );
    p.on("close", (code) => resolve(code ?? 1));
  });
}

describe.each(["postgres", "jetstream"] as const)("the %s sink (real 3-node NATS cluster)", (sink) => {
  let tc: TestCluster | undefined;
  afterEach(async () => {
    await tc?.stop();
    tc = undefined;
  });

  it("a worker SIGKILLed and another SIGSTOPped past its lease under load: nothing lost or doubled", async () => {
    tc = await startTestCluster({ workers: 3, sink, secured: true });
    await waitSettled(tc);
    const load = tc.load(9_000, 1_500);
    await tc.waitCommitted(1_500);
    process.kill(tc.workerPid("w1"), "SIGKILL");
    const w2 = tc.workerPid("w2");
    process.kill(w2, "SIGSTOP");
    try {
      await new Promise((r) => setTimeout(r, 2_500));
    } finally {
      process.kill(w2, "SIGCONT");
    }
    const summary = await load.done;
    await tc.waitCommitted(summary.acked, 90_000);
    const report = await tc.verify(load.ackLog);
    expect(report).toMatchObject({
      lost: 0,
      duplicated: 0,
      unexpected: 0,
      order_violations: 0,
      acknowledged: summary.acked,
    });
    expect(report.rows).toBe(summary.acked);
    // PostgreSQL keeps an audit row per commit, in the commit's transaction; the output stream none.
    if (sink === "postgres") expect(report.audit).toMatchObject({ rows: summary.acked });
    else expect(report.audit).toBeNull();
  });
});

describe("faults of PostgreSQL itself (real 3-node NATS cluster, private PostgreSQL)", () => {
  let tc: TestCluster | undefined;
  let browser: Browser | undefined;
  afterEach(async () => {
    await browser?.close();
    browser = undefined;
    await tc?.stop();
    tc = undefined;
  });

  it("stopped for 10 s, connections killed, a statement timeout: shards wait and retry, nothing lost or doubled", async () => {
    const config = parseConfig({
      ...testConfig(),
      sink: { type: "postgres", url: "postgres://placeholder@127.0.0.1/x", statementTimeoutMs: 500 },
    });
    tc = await startTestCluster({ workers: 2, config, sink: "postgres" });
    await waitSettled(tc);
    const pgRec = tc.file().postgres?.[0];
    expect(pgRec?.port).toBeGreaterThan(0);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
    const page = await browser.newPage();
    await page.goto(`${tc.file().coordinators[0]?.http}/`);
    await page.locator('#sink[data-healthy="true"]').waitFor({ timeout: 15_000 });
    // 45 s of load: it still runs when the last fault (the lock) comes, on a slow machine too.
    const load = tc.load(45_000, 1_000);
    await tc.waitCommitted(2_000);

    // 1. The server stopped for 10 s: status reports the sink unhealthy, shards wait.
    const restart = chaos("postgres-restart", tc.dir, 10);
    const unhealthy = await waitUntil("status to show the sink unhealthy", 15_000, async () => {
      const s = await tc!.status();
      return s.sink.healthy ? undefined : s.sink;
    });
    expect(unhealthy.reachable === false || Object.keys(unhealthy.trouble).length > 0).toBe(true);
    // The dashboard, in a real browser, says the same.
    await page.locator('#sink[data-healthy="false"]').waitFor({ timeout: 15_000 });
    await expect(page.locator("#sink").textContent()).resolves.toContain("UNHEALTHY");
    expect(await restart).toBe(0);
    await waitUntil("the sink healthy again", 30_000, async () =>
      (await tc!.status()).sink.healthy ? true : undefined,
    );
    await page.locator('#sink[data-healthy="true"]').waitFor({ timeout: 15_000 });

    // 2. Every connection killed, mid-transaction where a commit runs, each second for 3 s.
    expect(await chaos("postgres-kill-connections", tc.dir, 3)).toBe(0);

    // 3. A statement timeout: the checkpoint table locked (2 s, and until a worker has reported
    // a commit timing out, at most 15 s); commits time out at 0.5 s.
    const workerLogs = (): string =>
      tc!
        .file()
        .workers.map((w) => tc!.logOf(w.id))
        .join("\n");
    const locker = new pg.Client({
      host: "127.0.0.1",
      port: pgRec!.port,
      user: "sluice",
      database: "sluice",
    });
    await locker.connect();
    try {
      await locker.query("BEGIN");
      await locker.query("LOCK TABLE sluice_checkpoints IN ACCESS EXCLUSIVE MODE");
      await new Promise((r) => setTimeout(r, 2_000));
      await waitUntil("a commit to time out", 13_000, () =>
        workerLogs().includes("canceling statement due to statement timeout") ? true : undefined,
      );
      await locker.query("COMMIT");
    } finally {
      await locker.end();
    }

    // Every retry counted where Prometheus sees it.
    const scraped = await Promise.all(
      tc.file().workers.map((w) =>
        fetch(`${w.http}/metrics`).then(
          (r) => r.text(),
          () => "",
        ),
      ),
    );
    expect(scraped.join("\n")).toMatch(/sluice_commit_retries_total\{pipeline="[^"]+",shard="\d+"\} [1-9]/);

    const summary = await load.done;
    await tc.waitCommitted(summary.acked, 120_000);
    const report = await tc.verify(load.ackLog);
    expect(report).toMatchObject({ lost: 0, duplicated: 0, unexpected: 0, order_violations: 0 });
    expect(report.rows).toBe(summary.acked);
    // Through the stopped database and killed connections, the audit table agrees with the rows.
    expect(report.audit).toMatchObject({ rows: summary.acked, dead_lettered: 0, deduplicated: 0 });
    // The workers said why their shards waited.
    const logs = workerLogs();
    expect(logs).toContain("commit failed; the shard waits and retries");
    expect(logs).toContain("canceling statement due to statement timeout");
  });
});
