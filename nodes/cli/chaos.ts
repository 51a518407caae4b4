/**
 * `sluice chaos`: a load runs while the scenario's faults are injected one after another
 * through the scripts in chaos/ (so the scripts people run by hand are the ones tested), then
 * every fault is healed, the cluster drains, and a Jepsen-style check runs over what was
 * attempted, acknowledged and read.
 */
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import { Rng } from "../../shared/testkit/sim/rng.js";
import {
  countGoneFromStream,
  countHistoryMismatches,
  countSeqConflicts,
  divergence,
  median,
  missingIds,
  recoveryOf,
} from "./chaos-analysis.js";
import { applicableFaults, type FaultRecord, plan, runScript, targetFor } from "./chaos-faults.js";
import {
  connectCluster,
  isOurProcess,
  type NatsRuntime,
  openSinkInspector,
  readClusterConfig,
  readClusterFile,
} from "./cluster-file.js";
import { type Interrupt, Interrupted } from "./interrupt.js";
import { runLoad } from "./load.js";
import { down, type UpOptions, up } from "./local-cluster.js";
import { isSettled } from "./readiness.js";
import { gatherStatus } from "./status.js";
import { countCommitted, type VerifyReport, verify } from "./verify.js";
import { waitUntil } from "./wait.js";

export interface ChaosOptions {
  dir: string;
  /**
   * One fault type, a comma-separated list (cycled), or `mixed`: every type once in a seeded
   * order, then seeded draws.
   */
  scenario: string;
  /** Length of the fault phase, s. */
  durationS: number;
  seed: number;
  /** Records per second during the fault phase. */
  rate: number;
  portBase: number;
  /** How NATS nodes run when chaos starts the cluster. */
  natsRuntime: NatsRuntime;
  /** When chaos starts the cluster: its sink (see `UpOptions.sink`). */
  sink?: UpOptions["sink"];
  postgresUrl?: string;
  /** Leave the cluster running at the end (when chaos started it). */
  keep: boolean;
  /**
   * Ctrl-C: the fault being injected is healed at once (its script is interrupted and runs its
   * heal), the load stops, and the cluster chaos started is stopped (unless `keep`); `runChaos`
   * then rejects with `Interrupted`, with no verdict.
   */
  interrupt?: Interrupt;
  log: (line: string) => void;
}

export interface ChaosReport
  extends Pick<VerifyReport, "lost" | "duplicated" | "unexpected" | "order_violations"> {
  /**
   * Of `lost`: records the stream acknowledged and no longer holds at their sequence (a
   * broker loss). The rest are still in the stream and were never committed (sluice's).
   */
  lost_in_stream: number;
  lost_ids: string[];
  /**
   * Evidence that the stream's history changed under the cluster (a JetStream replica diverged
   * and numbers records differently): acquisitions that found the checkpoint's record moved and
   * reconciled by record id, and source sequences at which the sink holds two different records.
   */
  history_mismatches: number;
  sink_seq_conflicts: number;
  /**
   * Stream sequences at which the sink holds a record other than the one JetStream
   * acknowledged there: a replica served a different history than its quorum acknowledged.
   * `lost_diverged` / `duplicated_diverged` are the lost and duplicated records explained by
   * it (lost: its acknowledged sequence holds another record in the sink; duplicated: one of
   * its rows sits at such a sequence). Like `lost_in_stream`, they are the broker's faults.
   */
  ack_seq_conflicts: number;
  lost_diverged: number;
  duplicated_diverged: number;
  /** `ok` but with the broker's faults set apart: nothing lost, duplicated or reordered by sluice. */
  sluice_ok: boolean;
  scenario: string;
  seed: number;
  duration_s: number;
  faults: FaultRecord[];
  attempted: number;
  acknowledged: number;
  indeterminate: number;
  read: number;
  recovery_by_type: Record<string, { count: number; median_s: number | null; max_s: number | null }>;
  timeline: string[];
  ok: boolean;
}

export async function runChaos(o: ChaosOptions): Promise<ChaosReport> {
  const rng = new Rng(o.seed);
  const dir = resolve(o.dir);
  let started = false;
  if (
    !existsSync(join(dir, "cluster.json")) ||
    readClusterFile(dir).nats.every((n) => !isOurProcess(n.pid, dir))
  ) {
    o.log(`starting a local cluster in ${dir}`);
    await up({
      dir,
      workers: 3,
      coordinators: 2,
      portBase: o.portBase,
      natsRuntime: o.natsRuntime,
      ...(o.sink ? { sink: o.sink } : {}),
      ...(o.postgresUrl ? { postgresUrl: o.postgresUrl } : {}),
    });
    started = true;
  }
  const c0 = readClusterFile(dir);
  const cfg = readClusterConfig(c0);
  const pipeline = cfg.pipelines[0]!.name;
  // The load publishes as the producer; the checks read status, the sink and the stream as admin.
  const nc: NatsConnection = await connectCluster(c0, "admin", "sluice-chaos");
  const pub: NatsConnection = await connectCluster(c0, "producer", "sluice-chaos-load");
  const timeline: string[] = [];
  const t0 = Date.now();
  const mark = (line: string): void => {
    const l = `${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s  ${line}`;
    timeline.push(l);
    o.log(l);
  };
  const faults: FaultRecord[] = [];
  // The sink's file (or server) stays where it is across every fault, so one inspector serves.
  const sink = openSinkInspector(c0, nc);
  try {
    const guard = <T>(p: Promise<T>): Promise<T> => (o.interrupt ? o.interrupt.guard(p) : p);
    await guard(
      waitUntil(
        "a settled cluster",
        60_000,
        async () => (isSettled(await gatherStatus(nc, cfg, sink)) ? true : undefined),
        200,
      ),
    );
    const ackLog = join(dir, `chaos-${o.seed}-${Date.now()}.jsonl`);
    const ac = new AbortController();
    mark(`load: ${o.rate} records/s into '${pipeline}' (ack log ${ackLog})`);
    const load = runLoad(pub, {
      pipeline,
      count: Number.MAX_SAFE_INTEGER,
      rate: o.rate,
      ackLog,
      keys: 1000,
      signal: ac.signal,
    });
    o.interrupt?.signal.addEventListener("abort", () => ac.abort(), { once: true });
    const end = Date.now() + o.durationS * 1000;
    const queue = plan(o.scenario, rng, applicableFaults(c0));
    await new Promise((r) => setTimeout(r, 2_000));
    for (const fault of queue) {
      if (Date.now() >= end || o.interrupt?.signal.aborted) break;
      const c = readClusterFile(dir);
      const target = targetFor(fault, c, rng);
      const hold = fault === "rolling-restart" ? 2 : rng.int(3, 6);
      const before = await gatherStatus(nc, cfg, sink).catch(() => null);
      const touchesWorker = fault === "worker-kill" || fault === "worker-pause" || fault === "clock-skew";
      const shards = (before?.shards ?? [])
        .filter((r) => !touchesWorker || r.owner === target)
        .map((r) => r.shard);
      mark(`inject ${fault}${target ? ` on ${target}` : ""} for ${hold} s`);
      const res = await runScript(fault, dir, hold, target, o.interrupt?.signal);
      const inj = res.events.find((e) => e.event === "inject");
      const heal = res.events.find((e) => e.event === "heal");
      if (res.code !== 0)
        mark(`  ${fault} script exited ${res.code}: ${res.stderr.split("\n").slice(-2).join(" / ")}`);
      const rec: FaultRecord = {
        type: fault,
        target: inj?.target ?? target ?? "",
        injected_at: inj?.at ?? Date.now(),
        healed_at: heal?.at ?? null,
        shards,
        recovery_s: null,
        settled_after_heal_s: null,
        script_exit: res.code,
      };
      faults.push(rec);
      mark(`  healed ${fault}`);
      if (o.interrupt?.signal.aborted) break;
      const settled = await waitUntil(
        "the cluster to settle",
        60_000,
        async () => (isSettled(await gatherStatus(nc, cfg, sink)) ? Date.now() : undefined),
        200,
      ).catch(() => null);
      rec.settled_after_heal_s =
        settled && rec.healed_at ? Math.max(0, settled - rec.healed_at) / 1000 : null;
      mark(
        `  settled${rec.settled_after_heal_s === null ? " (not within 60 s)" : ` ${rec.settled_after_heal_s.toFixed(1)} s after heal`}`,
      );
      await new Promise((r) => setTimeout(r, 1_000));
    }
    ac.abort();
    const summary = await load;
    mark(
      `load stopped: ${summary.sent} sent, ${summary.acked} acked, ${summary.timeout + summary.failed} indeterminate`,
    );
    if (o.interrupt?.signal.aborted) throw new Interrupted();
    await waitUntil(
      "every acknowledged record to be read",
      120_000,
      async () => ((await countCommitted(sink, pipeline)) >= summary.acked ? true : undefined),
      500,
    ).catch(() => mark("  drain deadline passed with records still missing"));
    const rows = await sink.rows(pipeline);
    for (const f of faults) f.recovery_s = recoveryOf(rows, f);
    const v = await verify(sink, pipeline, ackLog);
    const lostIds = v.lost > 0 ? missingIds(rows, ackLog) : [];
    const lostInStream = await countGoneFromStream(nc, lostIds);
    if (v.lost > 0)
      mark(
        `lost ${v.lost}: ${lostInStream} no longer in the stream, ${v.lost - lostInStream} in it but never committed`,
      );
    const historyMismatches = countHistoryMismatches(dir);
    const seqConflicts = countSeqConflicts(rows);
    const div = divergence(rows, cfg.pipelines[0]!, ackLog, lostIds);
    if (div.conflicts > 0)
      mark(
        `the sink holds ${div.conflicts} records at sequences the stream acknowledged for others: ${div.lost} lost and ${div.duplicated} duplicated records explained by it`,
      );
    if (historyMismatches > 0 || seqConflicts > 0)
      mark(
        `the stream's history changed: ${historyMismatches} reconciliations, ${seqConflicts} sequences holding two records in the sink`,
      );
    const byType: ChaosReport["recovery_by_type"] = {};
    for (const t of new Set(faults.map((f) => f.type))) {
      const xs = faults.filter((f) => f.type === t && f.recovery_s !== null).map((f) => f.recovery_s!);
      byType[t] = {
        count: faults.filter((f) => f.type === t).length,
        median_s: median(xs),
        max_s: xs.length ? Math.max(...xs) : null,
      };
    }
    const report: ChaosReport = {
      scenario: o.scenario,
      seed: o.seed,
      duration_s: (Date.now() - t0) / 1000,
      faults,
      attempted: v.attempted,
      acknowledged: v.acknowledged,
      indeterminate: v.indeterminate,
      read: v.committed,
      lost: v.lost,
      lost_in_stream: lostInStream,
      lost_ids: lostIds.slice(0, 50).map((x) => x.id),
      history_mismatches: historyMismatches,
      sink_seq_conflicts: seqConflicts,
      ack_seq_conflicts: div.conflicts,
      lost_diverged: div.lost,
      duplicated_diverged: div.duplicated,
      sluice_ok:
        v.lost - lostInStream - div.lost <= 0 &&
        v.duplicated - div.duplicated === 0 &&
        v.unexpected === 0 &&
        v.order_violations === 0 &&
        (v.audit === null || v.audit.rows === v.rows) &&
        faults.every((f) => f.script_exit === 0),
      duplicated: v.duplicated,
      unexpected: v.unexpected,
      order_violations: v.order_violations,
      recovery_by_type: byType,
      timeline,
      ok: v.ok && faults.every((f) => f.script_exit === 0),
    };
    return report;
  } finally {
    await sink.close();
    await pub.close().catch(() => undefined);
    await nc.close().catch(() => undefined);
    if (started && !o.keep) await down(dir);
  }
}

export function formatChaos(r: ChaosReport): string {
  const lines = [
    `chaos ${r.scenario} (seed ${r.seed}): ${r.faults.length} faults in ${r.duration_s.toFixed(0)} s`,
    `attempted ${r.attempted}, acknowledged ${r.acknowledged}, indeterminate ${r.indeterminate}, read ${r.read}`,
    `lost ${r.lost} (${r.lost_in_stream} gone from the stream itself), duplicated ${r.duplicated}, unexpected ${r.unexpected}, per-key order violations ${r.order_violations}`,
    `stream history changes seen: ${r.history_mismatches} reconciliations, ${r.sink_seq_conflicts} sequences holding two records, ${r.ack_seq_conflicts} holding a record other than the acknowledged one (explaining ${r.lost_diverged} lost, ${r.duplicated_diverged} duplicated)`,
    "recovery (injection until every affected shard committed again):",
    ...Object.entries(r.recovery_by_type).map(
      ([t, x]) =>
        `  ${t.padEnd(16)} x${x.count}  median ${x.median_s === null ? "-" : `${x.median_s.toFixed(2)} s`}  max ${x.max_s === null ? "-" : `${x.max_s.toFixed(2)} s`}`,
    ),
    ...r.faults
      .filter((f) => f.script_exit !== 0)
      .map((f) => `  script for ${f.type} failed (exit ${f.script_exit})`),
    r.ok
      ? "CHAOS: OK"
      : r.sluice_ok
        ? "CHAOS: VIOLATED BY THE BROKER (sluice kept its guarantees)"
        : "CHAOS: VIOLATED",
  ];
  return lines.join("\n");
}
