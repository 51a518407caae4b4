/**
 * The coordinator's web dashboard in headless Chromium (Debian's, driven by playwright-core)
 * against a real cluster: every shard is shown with its owner, and a SIGKILLed worker shows up
 * as lost, its shards under other owners at higher epochs, and the failover in the event log.
 */
import { mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { type Browser, chromium, type Page } from "playwright-core";
import { afterEach, describe, expect, it } from "vitest";
import type { DashboardState } from "../../nodes/coordinator/dashboard/dashboard-model.js";
import { CHROMIUM } from "../kit/chromium.js";
import { startTestCluster, type TestCluster, waitSettled } from "./harness.js";

if (!CHROMIUM) {
  console.warn(
    "dashboard test SKIPPED: no Chromium at /usr/bin/chromium (install it: apt-get install chromium)",
  );
}
const resultsDir = resolve(dirname(fileURLToPath(import.meta.url)), "../../test-results");

interface Cell {
  shard: string;
  owner: string;
  epoch: number;
  phase: string;
}

/** The shard map as the page shows it. */
const cellsOf = (page: Page): Promise<Cell[]> =>
  page.locator("#shard-map [data-shard]").evaluateAll((els) =>
    els.map((e) => ({
      shard: e.getAttribute("data-shard") ?? "",
      owner: e.getAttribute("data-owner") ?? "",
      epoch: Number(e.getAttribute("data-epoch")),
      phase: e.getAttribute("data-phase") ?? "",
    })),
  );

describe.skipIf(!CHROMIUM)("web dashboard in headless Chromium (real 3-node NATS cluster)", () => {
  let tc: TestCluster | undefined;
  let browser: Browser | undefined;
  afterEach(async () => {
    await browser?.close();
    browser = undefined;
    await tc?.stop();
    tc = undefined;
  });

  it("shows every shard with its owner, and a SIGKILLed worker's shards moving", async () => {
    tc = await startTestCluster({ workers: 3, secured: true });
    const settled = await waitSettled(tc, 30_000, ["w1", "w2", "w3"]);
    const leader = settled.leader?.holder;
    const base = tc.file().coordinators.find((c) => c.id === leader)?.http;
    expect(base, `leader ${leader} has an HTTP endpoint in cluster.json`).toBeDefined();
    const url = `${base}/`;
    // Traffic, so the throughput and lag charts have something to draw.
    tc.load(60_000, 1_000);

    // The JSON API the page is built from (refreshed once a second, so it may trail the settle).
    // A shard shows a committed position only after its first commit, which waits for the
    // load's first record hashed to it: up to 30 s on a loaded CI machine.
    const state = async (): Promise<DashboardState> =>
      (await (await fetch(`${base}/api/state`)).json()) as DashboardState;
    await expect
      .poll(
        async () => {
          const s = await state();
          return {
            coordinator: s.coordinator,
            leader: s.leader?.holder,
            shards: s.shards.length,
            owned: s.shards.filter((x) => x.owner !== null && x.committed !== null && x.lag !== null).length,
            members: s.members.map((m) => `${m.id}:${m.status}`),
            // What a shard still missing shows, so a failure says which part never came.
            missing: s.shards
              .filter((x) => x.owner === null || x.committed === null || x.lag === null)
              .map(
                (x) =>
                  `${x.shard} owner=${x.owner} epoch=${x.epoch} phase=${x.phase} committed=${x.committed} lag=${x.lag}`,
              ),
          };
        },
        { timeout: 30_000 },
      )
      .toEqual({
        coordinator: leader,
        leader,
        shards: 16,
        owned: 16,
        members: ["w1:alive", "w2:alive", "w3:alive"],
        missing: [],
      });

    browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox"] });
    const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
    const foreign: string[] = [];
    const errors: string[] = [];
    page.on("request", (r) => {
      if (!r.url().startsWith(base!) && !r.url().startsWith("data:")) foreign.push(r.url());
    });
    page.on("pageerror", (e) => errors.push(e.message));
    await page.goto(url);

    // Every one of the 16 shards, each with an owner.
    await page.locator('#shard-map [data-shard]:not([data-owner=""])').nth(15).waitFor({ timeout: 15_000 });
    const before = await cellsOf(page);
    expect(before).toHaveLength(16);
    expect(before.every((c) => ["w1", "w2", "w3"].includes(c.owner))).toBe(true);
    for (const w of ["w1", "w2", "w3"]) {
      await page.locator(`#members [data-member="${w}"][data-status="alive"]`).waitFor({ timeout: 10_000 });
    }
    await expect(page.locator("#leader").textContent()).resolves.toContain(leader!);
    const w2Shards = new Map(before.filter((c) => c.owner === "w2").map((c) => [c.shard, c.epoch]));
    expect(w2Shards.size).toBeGreaterThan(0);
    // Records flowing: the throughput figure and chart fill in.
    await expect
      .poll(async () => Number((await page.locator("#total-rate").textContent())?.replace(/,/g, "")), {
        timeout: 20_000,
      })
      .toBeGreaterThan(0);

    const killedAt = Date.now();
    process.kill(tc.workerPid("w2"), "SIGKILL");

    await page.locator('#members [data-member="w2"][data-status="lost"]').waitFor({ timeout: 15_000 });
    await page.locator('#events [data-type="member-lost"][data-worker="w2"]').waitFor({ timeout: 15_000 });
    await page.locator('#events [data-type="assignment"][data-reason="failure"]').first().waitFor({
      timeout: 15_000,
    });
    // No shard left with w2; each of its shards owned by a survivor at a higher epoch.
    await expect
      .poll(
        async () => {
          const cells = await cellsOf(page);
          return cells.filter((c) => {
            const old = w2Shards.get(c.shard);
            const moved = old === undefined || c.epoch > old;
            return !["w1", "w3"].includes(c.owner) || c.phase !== "active" || !moved;
          });
        },
        { timeout: 20_000, interval: 250 },
      )
      .toEqual([]);
    const failoverMs = Date.now() - killedAt;
    await expect(page.locator("#members [data-member]").count()).resolves.toBe(3);
    for (const w of ["w1", "w3"]) {
      await page.locator(`#members [data-member="${w}"][data-status="alive"]`).waitFor({ timeout: 5_000 });
    }
    await expect
      .poll(async () => Number(await page.locator("#chart-rate").getAttribute("data-points")), {
        timeout: 10_000,
      })
      .toBeGreaterThanOrEqual(3);

    mkdirSync(resultsDir, { recursive: true });
    const shot = join(resultsDir, "dashboard.png");
    await page.screenshot({ path: shot, fullPage: true });
    console.log(
      `dashboard screenshot: ${shot} (page showed w2's shards moved ${failoverMs} ms after SIGKILL)`,
    );

    expect(foreign, "the page loads nothing from outside its coordinator").toEqual([]);
    expect(errors, "no script errors in the page").toEqual([]);
  });
});
