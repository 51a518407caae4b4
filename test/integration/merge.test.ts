/**
 * A merge of two branches on a real 3-node NATS cluster: both publish concurrently, in a random
 * interleaving, records of the same customers with out-of-order and late event times, while a
 * worker is SIGKILLed and another SIGSTOPped past its lease; then `sluice late reconcile`. The
 * branch tables, the late flags and the merge's table are checked against the rules computed
 * here, apart from the code under test.
 */
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { jetstream } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { afterEach, describe, expect, it } from "vitest";
import { waitUntil } from "../../nodes/cli/wait.js";
import type { DashboardState } from "../../nodes/coordinator/dashboard/dashboard-model.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import { parseConfig } from "../../shared/contract/config.js";
import type { CommittedRow } from "../../shared/contract/ports.js";
import { Headers, ingestSubject } from "../../shared/contract/wire.js";
import { Rng } from "../../shared/testkit/sim/rng.js";
import { startTestCluster, type TestCluster, testConfig, waitSettled } from "./harness.js";

const run = promisify(execFile);
const MAIN = new URL("../../dist/nodes/cli/main.js", import.meta.url).pathname;

const PER_BRANCH = 1_200;
const CUSTOMERS = 150;
const ALLOWED_MS = 2_000;
const BRANCHES = [
  { name: "crm", priority: 2 },
  { name: "billing", priority: 1 },
] as const;

interface Sent {
  branch: string;
  priority: number;
  id: string;
  key: string;
  updatedAt: number;
}

/** Byte order of UTF-8, as the merge compares record ids. */
const bytes = (a: string, b: string) => Buffer.compare(Buffer.from(a), Buffer.from(b));
/** `latest`: (event time, branch priority, record id). */
const beats = (a: Sent, b: Sent) =>
  a.updatedAt !== b.updatedAt
    ? a.updatedAt > b.updatedAt
    : a.priority !== b.priority
      ? a.priority > b.priority
      : bytes(a.id, b.id) > 0;

function policyOver(records: readonly Sent[]): Array<[string, string]> {
  const best = new Map<string, Sent>();
  for (const r of records) {
    const cur = best.get(r.key);
    if (!cur || beats(r, cur)) best.set(r.key, r);
  }
  return [...best.entries()].sort(([a], [b]) => bytes(a, b)).map(([k, r]) => [k, r.id]);
}

describe("merge of two branches (real 3-node NATS cluster)", () => {
  let tc: TestCluster | undefined;
  let stopped: number | undefined;
  afterEach(async () => {
    if (stopped !== undefined) process.kill(stopped, "SIGCONT");
    await tc?.stop();
    tc = undefined;
  });

  it("converges by the policy through a SIGKILL and a SIGSTOP, flags late records by stream order, and reconciles them", async () => {
    const config = parseConfig({
      ...testConfig(),
      pipelines: BRANCHES.map((b) => ({
        name: b.name,
        shards: 8,
        eventTime: "updated_at",
        lateness: { allowed: ALLOWED_MS },
        merge: { into: "customers", priority: b.priority },
      })),
      merges: [{ name: "customers", key: "customer_id", policy: "latest" }],
    });
    tc = await startTestCluster({ workers: 3, coordinators: 2, config });
    await waitSettled(tc);
    const js = jetstream(tc.nc, { timeout: 10_000 });
    const rng = new Rng(20261203);
    const base = Date.parse("2026-12-03T00:00:00Z");
    // Each branch's records in publish order: time moving forward with jitter, one in ten
    // 5 to 30 s behind (late once its shard has seen later ones), ties between branches common.
    const plan = new Map<string, Sent[]>();
    for (const b of BRANCHES) {
      const list: Sent[] = [];
      for (let i = 0; i < PER_BRANCH; i++) {
        const t = base + i * 100 + rng.int(-300, 300);
        list.push({
          branch: b.name,
          priority: b.priority,
          id: `${b.name}-${i}`,
          key: `c${rng.int(0, CUSTOMERS - 1)}`,
          updatedAt: rng.chance(0.1) ? t - rng.int(5_000, 30_000) : Math.floor(t / 500) * 500,
        });
      }
      plan.set(b.name, list);
    }
    const publishBranch = async (b: string): Promise<void> => {
      const list = plan.get(b)!;
      let i = 0;
      while (i < list.length) {
        // Random run lengths, so the branches interleave differently on every shard.
        const n = rng.int(1, 40);
        await Promise.all(
          list.slice(i, i + n).map((r) => {
            const h = natsHeaders();
            h.set(Headers.msgId, r.id);
            return js.publish(
              ingestSubject(b, r.key),
              encodeRecord({ customer_id: r.key, updated_at: r.updatedAt, branch: b }),
              { headers: h },
            );
          }),
        );
        i += n;
        await new Promise((r) => setTimeout(r, rng.int(0, 30)));
      }
    };
    const published = Promise.all(BRANCHES.map((b) => publishBranch(b.name)));
    const committed = async () => (await tc!.sink.rowCount("crm")) + (await tc!.sink.rowCount("billing"));
    await waitUntil("a fifth committed", 60_000, async () =>
      (await committed()) >= (2 * PER_BRANCH) / 5 ? true : undefined,
    );
    process.kill(tc.workerPid("w1"), "SIGKILL");
    stopped = tc.workerPid("w2");
    process.kill(stopped, "SIGSTOP");
    await new Promise((r) => setTimeout(r, 2_700));
    process.kill(stopped, "SIGCONT");
    stopped = undefined;
    await published;
    await waitUntil("every record committed", 120_000, async () =>
      (await committed()) >= 2 * PER_BRANCH ? true : undefined,
    );

    // Each branch table: every record once; its late flags are the rule over stream order.
    const all: Sent[] = [];
    const onTime: Sent[] = [];
    let lateCount = 0;
    for (const b of BRANCHES) {
      const sent = new Map(plan.get(b.name)!.map((r) => [r.id, r]));
      const rows = await tc.sink.rows(b.name, { values: true });
      expect(rows.length).toBe(PER_BRANCH);
      expect(new Set(rows.map((r) => r.recordId)).size).toBe(PER_BRANCH);
      const byShard = new Map<number, CommittedRow[]>();
      for (const r of rows) byShard.set(r.shard, [...(byShard.get(r.shard) ?? []), r]);
      for (const list of byShard.values()) {
        let max: number | null = null;
        for (const r of list.sort((x, y) => x.sourceSeq - y.sourceSeq)) {
          const s = sent.get(r.recordId)!;
          const late = max !== null && s.updatedAt < max - ALLOWED_MS;
          expect({ id: r.recordId, late: r.late === true }).toEqual({ id: r.recordId, late });
          if (late) lateCount++;
          else onTime.push(s);
          all.push(s);
          if (max === null || s.updatedAt > max) max = s.updatedAt;
        }
      }
    }
    expect(lateCount).toBeGreaterThan(20);
    const merged = async () => (await tc!.sink.mergeRows!("customers")).map((r) => [r.key, r.recordId]);
    // Before reconciliation: the policy over the on-time records.
    expect(await merged()).toEqual(policyOver(onTime));
    const lateListed = JSON.parse(
      (await run("node", [MAIN, "late", "list", "--dir", tc.dir, "--json"])).stdout,
    );
    expect(lateListed.crm.length + lateListed.billing.length).toBe(lateCount);

    const first = await run("node", [MAIN, "late", "reconcile", "--dir", tc.dir, "--merge", "customers"]);
    expect(first.stdout).toContain(`customers: reconciled ${lateCount} late record(s)`);
    // After it: the policy over every record, as if all had come on time; again: nothing.
    expect(await merged()).toEqual(policyOver(all));
    const again = await run("node", [MAIN, "late", "reconcile", "--dir", tc.dir]);
    expect(again.stdout).toContain("customers: reconciled 0 late record(s)");
    expect(await merged()).toEqual(policyOver(all));

    const status = JSON.parse(
      (await run("node", [MAIN, "merge", "status", "--dir", tc.dir, "--json"])).stdout,
    );
    expect(status[0]).toMatchObject({ merge: "customers", rows: CUSTOMERS });
    expect(status[0].convergence).toBeGreaterThan(base);

    // The same convergence in `sluice status`, on every coordinator's dashboard and in its metrics.
    const overall = JSON.parse((await run("node", [MAIN, "status", "--dir", tc.dir, "--json"])).stdout);
    expect(overall.merges[0]).toMatchObject({ merge: "customers", convergence: status[0].convergence });
    for (const c of tc.file().coordinators) {
      await expect
        .poll(
          async () => {
            const s = (await (await fetch(`${c.http}/api/state`)).json()) as DashboardState;
            return s.merges.map((m) => [m.merge, m.convergence, m.branches.map((b) => b.pendingLate)]);
          },
          { timeout: 10_000 },
        )
        .toEqual([["customers", status[0].convergence, [0, 0]]]);
      const metrics = await (await fetch(`${c.http}/metrics`)).text();
      expect(metrics).toContain(
        `sluice_merge_convergence_watermark_ms{merge="customers"} ${status[0].convergence}`,
      );
      expect(metrics).toMatch(/^sluice_merge_branch_lag_ms\{merge="customers",pipeline="crm"\} \d+$/m);
    }
  }, 300_000);
});
