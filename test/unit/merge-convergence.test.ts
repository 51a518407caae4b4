/**
 * A merge's convergence as the dashboard and the coordinator's metrics show it: the model
 * computes it from an observation's checkpoints and late records, and the gauges export it,
 * leaving out what is not known yet instead of exporting 0.
 */
import { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus";
import { MeterProvider } from "@opentelemetry/sdk-metrics";
import { describe, expect, it } from "vitest";
import { DashboardModel, type Observation } from "../../nodes/coordinator/dashboard/dashboard-model.js";
import { parseConfig } from "../../shared/contract/config.js";
import type { Checkpoint, LateRecord } from "../../shared/contract/ports.js";
import { EVENT_TIME_MAX_KEY, type MergeStatus } from "../../shared/core/merge-convergence.js";
import { CoordinatorMetrics } from "../../shared/telemetry/metrics.js";

const ALLOWED_MS = 10_000;
const cfg = parseConfig({
  pipelines: [
    { name: "orders", shards: 1 },
    ...[
      { name: "crm", priority: 2 },
      { name: "billing", priority: 1 },
    ].map((b) => ({
      name: b.name,
      shards: 2,
      eventTime: "updated_at",
      lateness: { allowed: ALLOWED_MS },
      merge: { into: "customers", priority: b.priority },
    })),
  ],
  merges: [{ name: "customers", key: "customer_id", policy: "latest" }],
});
const shards = ["orders.0", "crm.0", "crm.1", "billing.0", "billing.1"];
const cp = (max?: number): Checkpoint => ({
  epoch: 1,
  seq: 10,
  ...(max === undefined ? {} : { state: { [EVENT_TIME_MAX_KEY]: max } }),
});
const lateRecord = (reconciled: boolean) => ({ reconciled }) as LateRecord;

function obs(
  at: number,
  checkpoints: Record<string, Checkpoint | null>,
  late?: Observation["late"],
): Observation {
  return {
    at,
    leader: { holder: "c1", term: 1 },
    members: {},
    entries: {},
    consumers: null,
    checkpoints,
    sinkError: null,
    ...(late === undefined ? {} : { late }),
  };
}

describe("merge convergence on the dashboard", () => {
  it("is none until every branch shard has a watermark, then the lowest over them, with each branch's lag", () => {
    const m = new DashboardModel({ self: "c1", shards, failureTimeoutMs: 1000, config: cfg });
    const base = Date.parse("2026-12-03T00:00:00Z");
    const partial = m.observe(
      obs(1, {
        "orders.0": cp(),
        "crm.0": cp(base + 50_000),
        "crm.1": cp(base + 40_000),
        "billing.0": cp(base),
      }),
    ).state.merges;
    expect(partial).toEqual([
      {
        merge: "customers",
        policy: "latest",
        convergence: null,
        rows: null,
        branches: [
          { pipeline: "crm", priority: 2, watermark: base + 30_000, lagMs: 0, pendingLate: null },
          { pipeline: "billing", priority: 1, watermark: null, lagMs: null, pendingLate: null },
        ],
      },
    ] satisfies MergeStatus[]);

    const late = new Map([
      ["crm", []],
      ["billing", [lateRecord(false), lateRecord(true), lateRecord(false)]],
    ]);
    const all = m.observe(
      obs(
        2,
        {
          "crm.0": cp(base + 50_000),
          "crm.1": cp(base + 40_000),
          "billing.0": cp(base + 20_000),
          "billing.1": cp(base + 35_000),
        },
        late,
      ),
    ).state.merges[0]!;
    expect(all.convergence).toBe(base + 10_000);
    expect(all.branches.map((b) => [b.pipeline, b.watermark, b.lagMs, b.pendingLate])).toEqual([
      ["crm", base + 30_000, 0, 0],
      ["billing", base + 10_000, 20_000, 2],
    ]);

    // The sink did not answer: nothing is known this round.
    const down = m.observe(obs(3, Object.fromEntries(shards.map((s) => [s, null])))).state.merges[0]!;
    expect(down.convergence).toBeNull();
    expect(down.branches.map((b) => b.watermark)).toEqual([null, null]);
  });

  it("shows no merge without a config naming one", () => {
    const m = new DashboardModel({ self: "c1", shards: ["orders.0"], failureTimeoutMs: 1000 });
    expect(m.observe(obs(1, { "orders.0": cp() })).state.merges).toEqual([]);
  });
});

describe("merge convergence gauges", () => {
  async function scrape(merges: MergeStatus[]): Promise<string> {
    const exporter = new PrometheusExporter({ preventServerStart: true, withoutScopeInfo: true });
    const provider = new MeterProvider({ readers: [exporter] });
    new CoordinatorMetrics(provider.getMeter("test"), {
      members: () => 0,
      isLeader: () => false,
      merges: () => merges,
    });
    const { resourceMetrics } = await exporter.collect();
    const text = new PrometheusSerializer(undefined, false, undefined, true, true).serialize(resourceMetrics);
    await provider.shutdown();
    return text;
  }
  const status = (convergence: number | null, billing: number | null): MergeStatus => ({
    merge: "customers",
    policy: "latest",
    convergence,
    rows: null,
    branches: [
      { pipeline: "crm", priority: 2, watermark: 5_000, lagMs: billing === null ? null : 0, pendingLate: 0 },
      {
        pipeline: "billing",
        priority: 1,
        watermark: billing,
        lagMs: billing === null ? null : 5_000 - billing,
        pendingLate: 3,
      },
    ],
  });

  it("export the convergence watermark per merge and each branch's watermark, lag and pending late records", async () => {
    const text = await scrape([status(4_650, 4_650)]);
    expect(text).toMatch(/^sluice_merge_convergence_watermark_ms\{merge="customers"\} 4650$/m);
    expect(text).toMatch(/^sluice_merge_branch_watermark_ms\{merge="customers",pipeline="billing"\} 4650$/m);
    expect(text).toMatch(/^sluice_merge_branch_lag_ms\{merge="customers",pipeline="crm"\} 0$/m);
    expect(text).toMatch(/^sluice_merge_branch_lag_ms\{merge="customers",pipeline="billing"\} 350$/m);
    expect(text).toMatch(/^sluice_merge_late_pending_records\{merge="customers",pipeline="billing"\} 3$/m);
  });

  it("leave out a value not known yet rather than export 0", async () => {
    const text = await scrape([status(null, null)]);
    expect(text).not.toMatch(/^sluice_merge_convergence_watermark_ms\{/m);
    expect(text).not.toMatch(/^sluice_merge_branch_lag_ms\{/m);
    expect(text).toMatch(/^sluice_merge_branch_watermark_ms\{merge="customers",pipeline="crm"\} 5000$/m);
    expect(text).not.toMatch(/^sluice_merge_branch_watermark_ms\{merge="customers",pipeline="billing"\}/m);
  });
});
