/**
 * `sluice demo --merge`: two branches, `crm` (priority 2) and `billing` (priority 1), merged
 * into `customers` by policy `latest` (README "Merges"). Both are published at once over the
 * same customers, with event times out of order and some late, while a worker is SIGKILLed and
 * another joins; the progress line shows the convergence watermark advancing. At the end:
 * exactly-once on both branches, every late flag against the watermark rule over each shard's
 * stream order, `late reconcile`, and the merge's table against the policy computed here from
 * the records published — before reconciling over the on-time records, after it over all.
 */
import { join } from "node:path";
import { encodeRecord } from "../../shared/contract/codec.js";
import { parseConfig, type SluiceConfig } from "../../shared/contract/config.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import type { CommittedRow, SinkInspector } from "../../shared/contract/ports.js";
import { checkpointLookup, mergeStatus } from "../../shared/core/merge-convergence.js";
import { connectCluster, openSinkInspector, readClusterConfig } from "./cluster-file.js";
import { type DemoOptions, endDemo, guarded, say, startDemoCluster, WorkerChurn } from "./demo.js";
import { Interrupted } from "./interrupt.js";
import { type LoadSummary, runLoad } from "./load.js";
import { reconcileMerge } from "./merge-commands.js";
import { waitSettled } from "./readiness.js";
import { gatherStatus } from "./status.js";
import { countCommitted, formatVerify, verify } from "./verify.js";
import { waitUntil } from "./wait.js";

const MERGE = "customers";
const BRANCHES = [
  { name: "crm", priority: 2 },
  { name: "billing", priority: 1 },
] as const;
const ALLOWED_MS = 10_000;
const SHARDS = 8;
/** Event time of the first record: the plan is the same on every run with the same seed. */
const BASE_MS = Date.UTC(2026, 0, 1);
/** Event time a branch moves on per record published, ms. */
const STEP_MS = 25;
/** Event times fall on 250 ms ticks, so that the policy's ties (same time, or same time and branch) are common. */
const TICK_MS = 250;

export interface MergeDemoOptions extends DemoOptions {
  seed: number;
}

/** One record the demo publishes, as the policy sees it. */
interface Planned {
  branch: string;
  priority: number;
  id: string;
  key: string;
  updatedAt: number;
}

/** mulberry32: a small seeded generator, so a seed always gives the same records. */
function seeded(seed: number): { int(lo: number, hi: number): number; chance(p: number): boolean } {
  let a = seed >>> 0;
  const next = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  };
  return { int: (lo, hi) => lo + Math.floor(next() * (hi - lo + 1)), chance: (p) => next() < p };
}

/**
 * A branch's records in publish order: event time moving forward with ±0.6 s of jitter, and one
 * in twenty-five 15 to 60 s behind (late once its shard has seen later ones, allowed being 10 s).
 */
function planBranch(seed: number, b: (typeof BRANCHES)[number], count: number, keys: number): Planned[] {
  const rng = seeded(seed * 31 + b.priority);
  const out: Planned[] = [];
  for (let i = 0; i < count; i++) {
    let t = BASE_MS + i * STEP_MS + rng.int(-600, 600);
    if (rng.chance(0.04)) t -= rng.int(15_000, 60_000);
    out.push({
      branch: b.name,
      priority: b.priority,
      id: `${b.name}-${String(i).padStart(7, "0")}`,
      key: `c${String(rng.int(0, keys - 1)).padStart(5, "0")}`,
      updatedAt: Math.floor(t / TICK_MS) * TICK_MS,
    });
  }
  return out;
}

/** Record ids compare byte by byte in UTF-8, as the merge compares them. */
const bytes = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));

/** Policy `latest`: (event time, branch priority, record id). */
const beats = (a: Planned, b: Planned): boolean =>
  a.updatedAt !== b.updatedAt
    ? a.updatedAt > b.updatedAt
    : a.priority !== b.priority
      ? a.priority > b.priority
      : bytes(a.id, b.id) > 0;

/** Key -> the id of its highest record by the policy. */
function policyOver(records: Iterable<Planned>): Map<string, string> {
  const best = new Map<string, Planned>();
  for (const r of records) {
    const cur = best.get(r.key);
    if (!cur || beats(r, cur)) best.set(r.key, r);
  }
  return new Map([...best].map(([k, r]) => [k, r.id]));
}

/** Keys whose row differs from what the policy says (missing, extra, or another record). */
function mergeDiff(table: ReadonlyMap<string, string>, want: ReadonlyMap<string, string>): string[] {
  const keys = new Set([...table.keys(), ...want.keys()]);
  return [...keys].filter((k) => table.get(k) !== want.get(k)).sort(bytes);
}

const iso = (ms: number | null): string => (ms === null ? "none yet" : new Date(ms).toISOString());

export function mergeDemoConfig(): SluiceConfig {
  return parseConfig({
    pipelines: BRANCHES.map((b) => ({
      name: b.name,
      shards: SHARDS,
      eventTime: "updated_at",
      lateness: { allowed: ALLOWED_MS },
      merge: { into: MERGE, priority: b.priority },
    })),
    merges: [{ name: MERGE, key: "customer_id", policy: "latest" }],
  });
}

/** The convergence watermark and each branch's lag, as the progress line shows them. */
async function convergenceLine(sink: SinkInspector, cfg: SluiceConfig): Promise<string> {
  const s = mergeStatus(cfg, cfg.merges[0]!, checkpointLookup(await sink.checkpoints()), null, null);
  const lags = s.branches
    .map((b) => `${b.pipeline} ${b.lagMs === null ? "-" : `${b.lagMs.toLocaleString("en-US")} ms`}`)
    .join(", ");
  return `convergence ${iso(s.convergence)} (lag ${lags})`;
}

export async function runMergeDemo(o: MergeDemoOptions): Promise<boolean> {
  if (o.sink === "jetstream")
    throw new SluiceError(
      ErrorCode.InvalidConfig,
      "--merge needs a database sink (sqlite or postgres): an output stream holds no merge",
    );
  const { dir, c, t0 } = await startDemoCluster(
    o,
    mergeDemoConfig(),
    `branches crm (priority 2) and billing (priority 1), ${SHARDS} shards each, event time updated_at, lateness allowed ${ALLOWED_MS / 1000} s, merged into '${MERGE}' by key customer_id, policy latest`,
  );
  const cfg = readClusterConfig(c);
  const nc = await connectCluster(c, "reader", "sluice-demo");
  const pub = await connectCluster(c, "producer", "sluice-demo-load");
  const sink = openSinkInspector(c, nc);
  let poll: ReturnType<typeof setInterval> | undefined;
  const guard = guarded(o);
  try {
    await guard(waitSettled(nc, cfg, sink, 60_000));
    say(
      `cluster ready in ${((Date.now() - t0) / 1000).toFixed(1)} s; NATS at ${c.nats.map((n) => n.url).join(", ")}`,
    );
    const perBranch = Math.max(1, Math.floor(o.count / BRANCHES.length));
    const total = perBranch * BRANCHES.length;
    const keys = Math.max(10, Math.min(2_000, Math.floor(total / 20)));
    const plans = new Map(BRANCHES.map((b) => [b.name, planBranch(o.seed, b, perBranch, keys)]));
    const planned = new Map([...plans.values()].flatMap((l) => l.map((r) => [r.id, r] as const)));
    const churn = new WorkerChurn(c, total, () => gatherStatus(nc, cfg, sink));
    const sent = new Map<string, number>(BRANCHES.map((b) => [b.name, 0]));
    say(
      `loading ${total} records (${perBranch} per branch, ${keys} customers, seed ${o.seed}) at ${o.rate}/s in all`,
    );

    // What the progress line shows, read asynchronously: rows committed and the convergence.
    let committed = 0;
    let converged = "convergence none yet";
    let reading = false;
    poll = setInterval(() => {
      if (reading) return;
      reading = true;
      void (async () => {
        const counts = await Promise.all(BRANCHES.map((b) => countCommitted(sink, b.name)));
        committed = counts.reduce((a, b) => a + b, 0);
        converged = await convergenceLine(sink, cfg).catch(() => converged);
      })().finally(() => {
        reading = false;
      });
    }, 500);
    const tty = process.stdout.isTTY;
    let lastLine = 0;
    const progress = (force = false): void => {
      const now = Date.now();
      if (!force && now - lastLine < (tty ? 250 : 2000)) return;
      lastLine = now;
      const out = [...sent.values()].reduce((a, b) => a + b, 0);
      const line = `${committed.toLocaleString("en-US")}/${total.toLocaleString("en-US")} committed (published ${out.toLocaleString("en-US")})  ${converged}`;
      if (tty) process.stdout.write(`\r[demo] ${line}   `);
      else say(line);
    };
    const summaries: LoadSummary[] = await Promise.all(
      BRANCHES.map((b) => {
        const plan = plans.get(b.name)!;
        return runLoad(pub, {
          pipeline: b.name,
          count: perBranch,
          rate: Math.max(1, Math.round(o.rate / BRANCHES.length)),
          ackLog: join(dir, `demo-${b.name}-acks.jsonl`),
          keys,
          ...(o.interrupt ? { signal: o.interrupt.signal } : {}),
          record: (i) => {
            const r = plan[i]!;
            return {
              id: r.id,
              key: r.key,
              data: encodeRecord({ customer_id: r.key, updated_at: r.updatedAt, branch: b.name, n: i }),
            };
          },
          onProgress: (p) => {
            sent.set(b.name, p.sent);
            churn.step([...sent.values()].reduce((a, n) => a + n, 0));
            progress();
          },
        });
      }),
    );
    if (summaries.some((s) => s.stopped === "aborted")) throw new Interrupted();
    await churn.settled();
    const acked = summaries.reduce((n, s) => n + s.acked, 0);
    say(
      `load done: ${acked} acked, ${summaries.reduce((n, s) => n + s.failed, 0)} failed, ${summaries.reduce((n, s) => n + s.timeout, 0)} timed out`,
    );
    await guard(
      waitUntil(
        "the sink to catch up",
        120_000,
        async () => {
          const counts = await Promise.all(BRANCHES.map((b) => countCommitted(sink, b.name)));
          return counts.every((n, i) => n >= summaries[i]!.acked) ? true : undefined;
        },
        250,
      ).catch(() => undefined),
    );
    clearInterval(poll);
    committed = (await Promise.all(BRANCHES.map((b) => countCommitted(sink, b.name)))).reduce(
      (a, b) => a + b,
      0,
    );
    converged = await convergenceLine(sink, cfg).catch(() => converged);
    progress(true);
    if (tty) process.stdout.write("\n");

    const failures: string[] = [];
    // Exactly-once on each branch, from its ack log.
    for (const b of BRANCHES) {
      const report = await verify(sink, b.name, join(dir, `demo-${b.name}-acks.jsonl`));
      console.log(formatVerify(report));
      if (!report.ok) failures.push(`exactly-once failed on ${b.name}`);
    }
    say(
      await churn.failover(
        sink,
        BRANCHES.map((b) => b.name),
      ),
    );

    // Late flags: the watermark rule over each shard's stream order, with the event times planned here.
    const committedRecords: Planned[] = [];
    const onTime: Planned[] = [];
    let late = 0;
    let wrongFlags = 0;
    for (const b of BRANCHES) {
      const byShard = new Map<number, CommittedRow[]>();
      for (const r of await sink.rows(b.name, { values: true }))
        byShard.set(r.shard, [...(byShard.get(r.shard) ?? []), r]);
      for (const rows of byShard.values()) {
        let max: number | null = null;
        for (const r of rows.sort((x, y) => x.sourceSeq - y.sourceSeq)) {
          const p = planned.get(r.recordId);
          if (!p) continue;
          const isLate = max !== null && p.updatedAt < max - ALLOWED_MS;
          if (isLate !== (r.late === true)) wrongFlags++;
          if (isLate) late++;
          else onTime.push(p);
          committedRecords.push(p);
          if (max === null || p.updatedAt > max) max = p.updatedAt;
        }
      }
    }
    say(
      `late records: ${late} (event time more than ${ALLOWED_MS / 1000} s below their shard's highest), ${wrongFlags} flagged otherwise than the watermark rule says`,
    );
    if (wrongFlags > 0) failures.push(`${wrongFlags} late flag(s) not as the watermark rule says`);

    const table = async (): Promise<Map<string, string>> =>
      new Map(((await sink.mergeRows?.(MERGE)) ?? []).map((r) => [r.key, r.recordId]));
    const check = async (when: string, over: readonly Planned[]): Promise<void> => {
      const diff = mergeDiff(await table(), policyOver(over));
      say(
        `merge '${MERGE}' ${when}: ${diff.length === 0 ? "every key's row is the policy's choice" : `${diff.length} key(s) differ from the policy, e.g. ${diff.slice(0, 3).join(", ")}`}`,
      );
      if (diff.length > 0) failures.push(`merge table ${when}: ${diff.length} key(s) differ`);
    };
    await check(`before reconciling (policy latest over ${onTime.length} on-time records)`, onTime);

    const m = cfg.merges[0]!;
    const first = await reconcileMerge(c, cfg, m);
    const again = await reconcileMerge(c, cfg, m);
    say(
      `late reconcile: ${first.reconciled} late record(s) applied; a second run applied ${again.reconciled}`,
    );
    if (first.reconciled !== late)
      failures.push(`reconciled ${first.reconciled} late records, ${late} were late`);
    if (again.reconciled !== 0) failures.push(`a second reconciliation applied ${again.reconciled}`);
    await check(
      `after reconciling (policy latest over all ${committedRecords.length} records)`,
      committedRecords,
    );
    say(`rows are final below ${(await convergenceLine(sink, cfg)).replace(/^convergence /, "")}`);

    const ok = failures.length === 0;
    say(
      ok
        ? "verdict: OK (exactly-once on crm and billing, late flags by the watermark rule, merge table as policy latest before and after reconciling)"
        : `verdict: FAILED (${failures.join("; ")})`,
    );
    return ok;
  } catch (err) {
    if (!(err instanceof Interrupted)) throw err;
    if (process.stdout.isTTY) process.stdout.write("\n");
    say("interrupted: no verdict");
    return false;
  } finally {
    clearInterval(poll);
    await sink.close();
    await pub.close().catch(() => undefined);
    await nc.close().catch(() => undefined);
    await endDemo(o, dir);
  }
}
