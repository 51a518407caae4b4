/**
 * The Grafana dashboard in deploy/ only queries metrics the nodes serve: a renamed metric
 * would otherwise leave a panel silently empty.
 */
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

/** What the nodes serve at /metrics: name, kind and labels. */
const METRICS: Record<string, { kind: "counter" | "gauge" | "histogram"; labels: string[] }> = {
  // workers
  sluice_records_in_total: { kind: "counter", labels: ["pipeline", "shard"] },
  sluice_records_committed_total: { kind: "counter", labels: ["pipeline", "shard"] },
  sluice_records_dead_lettered_total: { kind: "counter", labels: ["pipeline", "shard"] },
  sluice_history_mismatches_total: { kind: "counter", labels: ["pipeline", "shard"] },
  sluice_commit_retries_total: { kind: "counter", labels: ["pipeline", "shard"] },
  sluice_shard_circuit_state: { kind: "gauge", labels: ["pipeline", "shard"] },
  sluice_commit_duration_seconds: { kind: "histogram", labels: ["pipeline"] },
  sluice_batch_size_records: { kind: "histogram", labels: ["pipeline"] },
  sluice_shard_lag_records: { kind: "gauge", labels: ["pipeline", "shard"] },
  sluice_shard_committed_seq: { kind: "gauge", labels: ["pipeline", "shard"] },
  sluice_shard_epoch: { kind: "gauge", labels: ["pipeline", "shard"] },
  // coordinators
  sluice_assignments_total: { kind: "counter", labels: ["reason"] },
  sluice_handoffs_total: { kind: "counter", labels: ["reason"] },
  sluice_handoff_duration_seconds: { kind: "histogram", labels: [] },
  sluice_heartbeat_delay_seconds: { kind: "histogram", labels: [] },
  sluice_leader_changes_total: { kind: "counter", labels: [] },
  sluice_members: { kind: "gauge", labels: [] },
  sluice_is_leader: { kind: "gauge", labels: [] },
  sluice_merge_convergence_watermark_ms: { kind: "gauge", labels: ["merge"] },
  sluice_merge_branch_watermark_ms: { kind: "gauge", labels: ["merge", "pipeline"] },
  sluice_merge_branch_lag_ms: { kind: "gauge", labels: ["merge", "pipeline"] },
  sluice_merge_late_pending_records: { kind: "gauge", labels: ["merge", "pipeline"] },
  // sink
  sluice_sink_commits_total: { kind: "counter", labels: [] },
  sluice_sink_commit_duration_seconds: { kind: "histogram", labels: [] },
  sluice_sink_fenced_total: { kind: "counter", labels: [] },
};
// biome-ignore lint/suspicious/noTemplateCurlyInString: Grafana's placeholder for an imported data source.
const DS_UID = "${DS_PROMETHEUS}";
/** Labels Prometheus adds to every series (scrape target), or to histogram buckets. */
const TARGET_LABELS = ["job", "instance", "role"];

interface Target {
  expr?: string;
  datasource?: { uid?: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  datasource?: { type?: string; uid?: string };
  targets?: Target[];
  panels?: Panel[];
}
interface Dashboard {
  __inputs: Array<{ name: string; type: string; pluginId: string }>;
  schemaVersion: number;
  uid: string;
  title: string;
  panels: Panel[];
  annotations: { list: Array<{ expr?: string }> };
  templating: { list: Array<{ definition?: string; query?: string | { query: string } }> };
}

const file = join(dirname(fileURLToPath(import.meta.url)), "../../deploy/grafana/sluice-dashboard.json");
const dash = JSON.parse(readFileSync(file, "utf8")) as Dashboard;
const panels = dash.panels.flatMap((p) => [p, ...(p.panels ?? [])]);
const exprs = [
  ...panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr ?? "")),
  ...dash.annotations.list.map((a) => a.expr ?? ""),
  ...dash.templating.list.flatMap((v) => [
    v.definition ?? "",
    typeof v.query === "string" ? v.query : (v.query?.query ?? ""),
  ]),
].filter((e) => e.length > 0);

/** The served metric a series name belongs to (histograms serve _bucket, _sum and _count). */
function metricOf(series: string): string | undefined {
  if (METRICS[series] && METRICS[series].kind !== "histogram") return series;
  const m = /^(.*)_(bucket|sum|count)$/.exec(series);
  return m && METRICS[m[1]!]?.kind === "histogram" ? m[1] : undefined;
}

describe("deploy/grafana/sluice-dashboard.json", () => {
  it("is an importable dashboard over a DS_PROMETHEUS data source input", () => {
    expect(dash.schemaVersion).toBeGreaterThanOrEqual(36);
    expect(dash.schemaVersion).toBeLessThanOrEqual(41);
    expect(dash.uid).toBeTruthy();
    expect(dash.__inputs).toContainEqual(
      expect.objectContaining({ name: "DS_PROMETHEUS", type: "datasource", pluginId: "prometheus" }),
    );
    const ids = panels.map((p) => p.id);
    expect(new Set(ids).size).toBe(ids.length);
    for (const p of panels) {
      expect(p.gridPos.x + p.gridPos.w, p.title).toBeLessThanOrEqual(24);
      if (p.type === "row") continue;
      expect(p.datasource?.uid, p.title).toBe(DS_UID);
      expect(p.targets?.length, p.title).toBeGreaterThan(0);
      for (const t of p.targets ?? []) expect(t.datasource?.uid, p.title).toBe(DS_UID);
    }
  });

  it("queries only metrics the nodes serve, with their labels, and covers all of them", () => {
    const used = new Set<string>();
    const unknown: string[] = [];
    const badLabels: string[] = [];
    for (const expr of exprs) {
      for (const m of expr.matchAll(/\b(sluice_[a-z0-9_]+)(\{([^}]*)\})?/g)) {
        const metric = metricOf(m[1]!);
        if (!metric) {
          unknown.push(`${m[1]} in ${expr}`);
          continue;
        }
        used.add(metric);
        const allowed = [
          ...METRICS[metric]!.labels,
          ...TARGET_LABELS,
          ...(m[1]!.endsWith("_bucket") ? ["le"] : []),
        ];
        for (const sel of (m[3] ?? "").split(",").filter((s) => s.trim())) {
          const label = /^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)/.exec(sel)?.[1];
          if (!label || !allowed.includes(label)) badLabels.push(`${label ?? sel} on ${m[1]} in ${expr}`);
        }
      }
    }
    expect(unknown).toEqual([]);
    expect(badLabels).toEqual([]);
    expect([...used].sort()).toEqual(Object.keys(METRICS).sort());
  });

  it("has the panels operators look for", () => {
    const titles = panels.map((p) => p.title.toLowerCase()).join("\n");
    for (const want of [
      "committed records/s",
      "per shard",
      "commit latency",
      "batch size",
      "lag per shard",
      "dead letters",
      "assignments by reason",
      "hand-offs by reason",
      "hand-off duration",
      "heartbeat delay p99",
      "leader changes",
      "members",
    ]) {
      expect(titles).toContain(want);
    }
    expect(
      exprs.some((e) => e.includes("histogram_quantile(0.99") && e.includes("sluice_commit_duration")),
    ).toBe(true);
    expect(
      exprs.some((e) => e.includes("histogram_quantile(0.5") && e.includes("sluice_commit_duration")),
    ).toBe(true);
  });
});
