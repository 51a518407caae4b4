/**
 * `sluice chaos`: a load runs while the scenario's faults are injected one after another
 * through the scripts in chaos/ (so the scripts people run by hand are the ones tested), then
 * every fault is healed, the cluster drains, and a Jepsen-style check runs over what was
 * attempted, acknowledged and read.
 */
import { spawn } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import Database from "better-sqlite3";
import { connectNats } from "../../shared/adapters/nats/connection.js";
import { inputStream, type PipelineStreams } from "../../shared/contract/wire.js";
import { Rng } from "../../shared/testkit/sim/rng.js";
import { runLoad } from "./load.js";
import {
  type ClusterFile,
  down,
  isOurProcess,
  type NatsRuntime,
  readClusterConfig,
  readClusterFile,
  up,
} from "./local-cluster.js";
import { isSettled } from "./readiness.js";
import { gatherStatus } from "./status.js";
import { countCommitted, type VerifyReport, verify } from "./verify.js";
import { waitUntil } from "./wait.js";

export const FAULTS = [
  "worker-kill",
  "worker-pause",
  "leader-kill",
  "nats-kill",
  "nats-pause",
  "nats-partition",
  "cpu-starve",
  "clock-skew",
  "rolling-restart",
  "scale",
] as const;
export type Fault = (typeof FAULTS)[number];

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
  /** Leave the cluster running at the end (when chaos started it). */
  keep: boolean;
  log: (line: string) => void;
}

export interface FaultRecord {
  type: Fault;
  target: string;
  injected_at: number;
  healed_at: number | null;
  /** Shards whose commits the fault could interrupt. */
  shards: string[];
  /** s from injection until every affected shard committed again (null: not observed). */
  recovery_s: number | null;
  /** s from the heal until the whole cluster was settled again (every shard owned and active). */
  settled_after_heal_s: number | null;
  script_exit: number;
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

const chaosDir = resolve(
  fileURLToPath(new URL(".", import.meta.url)),
  /[\\/]dist[\\/]/.test(import.meta.url) ? "../../.." : "../..",
  "chaos",
);

/** Runs one chaos script to completion; returns its events and exit code. */
function runScript(
  fault: Fault,
  dir: string,
  durationS: number,
  target: string | undefined,
): Promise<{ events: Array<{ event: string; target: string; at: number }>; code: number; stderr: string }> {
  return new Promise((resolvePromise) => {
    const args = [join(chaosDir, `${fault}.sh`), "--dir", dir, "--duration", String(durationS)];
    if (target) args.push("--target", target);
    const child = spawn("bash", args, { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    child.stderr.on("data", (d) => {
      err += d;
    });
    child.on("close", (code) => {
      const events = out
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as { event: string; target: string; at: number });
      resolvePromise({ events, code: code ?? 1, stderr: err.trim() });
    });
  });
}

/** Checks a scenario name: `mixed`, a fault, or a comma-separated list of faults. */
export function parseScenario(s: string): Fault[] | "mixed" {
  if (s === "mixed") return "mixed";
  const list = s.split(",").map((x) => x.trim());
  for (const f of list) {
    if (!(FAULTS as readonly string[]).includes(f))
      throw new Error(`unknown fault '${f}': ${FAULTS.join(", ")} or mixed`);
  }
  return list as Fault[];
}

function plan(o: ChaosOptions, rng: Rng): Fault[] {
  const sc = parseScenario(o.scenario);
  if (sc !== "mixed") return Array.from({ length: 1000 }, (_, i) => sc[i % sc.length]!);
  const all = [...FAULTS];
  for (let i = all.length - 1; i > 0; i--) {
    const j = rng.int(0, i);
    [all[i], all[j]] = [all[j]!, all[i]!];
  }
  return [...all, ...Array.from({ length: 1000 }, () => rng.pick(FAULTS))];
}

function targetFor(fault: Fault, c: ClusterFile, rng: Rng): string | undefined {
  const workers = c.workers.filter((w) => isOurProcess(w.pid, c.dir)).map((w) => w.id);
  switch (fault) {
    case "worker-kill":
    case "worker-pause":
    case "clock-skew":
      return workers.length > 0 ? rng.pick(workers) : undefined;
    case "nats-kill":
    case "nats-pause":
    case "nats-partition":
      return rng.pick(c.nats.map((n) => n.id));
    default:
      return undefined;
  }
}

/** Recovery: for each affected shard, the first commit at or after injection (by another worker if one was hit). */
function recoveryOf(sink: string, pipeline: string, f: FaultRecord): number | null {
  if (f.shards.length === 0) return null;
  const db = new Database(sink, { readonly: true });
  try {
    const q = db.prepare(
      `SELECT MIN(committed_at) AS t FROM "${pipeline}" WHERE shard = ? AND committed_at >= ? AND worker != ?`,
    );
    let worst = 0;
    for (const key of f.shards) {
      const shard = Number(key.split(".")[1]);
      const exclude = f.type === "worker-kill" || f.type === "worker-pause" ? f.target : "";
      const row = q.get(shard, f.injected_at, exclude) as { t: number | null };
      if (row.t === null) return null;
      worst = Math.max(worst, row.t - f.injected_at);
    }
    return worst / 1000;
  } finally {
    db.close();
  }
}

const median = (xs: number[]): number | null => {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

export async function runChaos(o: ChaosOptions): Promise<ChaosReport> {
  const rng = new Rng(o.seed);
  const dir = resolve(o.dir);
  let started = false;
  if (
    !existsSync(join(dir, "cluster.json")) ||
    readClusterFile(dir).nats.every((n) => !isOurProcess(n.pid, dir))
  ) {
    o.log(`starting a local cluster in ${dir}`);
    await up({ dir, workers: 3, coordinators: 2, portBase: o.portBase, natsRuntime: o.natsRuntime });
    started = true;
  }
  const c0 = readClusterFile(dir);
  const cfg = readClusterConfig(c0);
  const pipeline = cfg.pipelines[0]!.name;
  const nc: NatsConnection = await connectNats({ servers: c0.nats.map((n) => n.url), name: "sluice-chaos" });
  const timeline: string[] = [];
  const t0 = Date.now();
  const mark = (line: string): void => {
    const l = `${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s  ${line}`;
    timeline.push(l);
    o.log(l);
  };
  const faults: FaultRecord[] = [];
  try {
    await waitUntil(
      "a settled cluster",
      60_000,
      async () => (isSettled(await gatherStatus(nc, cfg, c0.sink)) ? true : undefined),
      200,
    );
    const ackLog = join(dir, `chaos-${o.seed}-${Date.now()}.jsonl`);
    const ac = new AbortController();
    mark(`load: ${o.rate} records/s into '${pipeline}' (ack log ${ackLog})`);
    const load = runLoad(nc, {
      pipeline,
      count: Number.MAX_SAFE_INTEGER,
      rate: o.rate,
      ackLog,
      keys: 1000,
      signal: ac.signal,
    });
    const end = Date.now() + o.durationS * 1000;
    const queue = plan(o, rng);
    await new Promise((r) => setTimeout(r, 2_000));
    for (const fault of queue) {
      if (Date.now() >= end) break;
      const c = readClusterFile(dir);
      const target = targetFor(fault, c, rng);
      const hold = fault === "rolling-restart" ? 2 : rng.int(3, 6);
      const before = await gatherStatus(nc, cfg, c.sink).catch(() => null);
      const touchesWorker = fault === "worker-kill" || fault === "worker-pause" || fault === "clock-skew";
      const shards = (before?.shards ?? [])
        .filter((r) => !touchesWorker || r.owner === target)
        .map((r) => r.shard);
      mark(`inject ${fault}${target ? ` on ${target}` : ""} for ${hold} s`);
      const res = await runScript(fault, dir, hold, target);
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
      const settled = await waitUntil(
        "the cluster to settle",
        60_000,
        async () => (isSettled(await gatherStatus(nc, cfg, c.sink)) ? Date.now() : undefined),
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
    const cEnd = readClusterFile(dir);
    await waitUntil(
      "every acknowledged record to be read",
      120_000,
      () => (countCommitted(cEnd.sink, pipeline) >= summary.acked ? true : undefined),
      500,
    ).catch(() => mark("  drain deadline passed with records still missing"));
    for (const f of faults) f.recovery_s = recoveryOf(cEnd.sink, pipeline, f);
    const v = verify(cEnd.sink, pipeline, ackLog);
    const lostIds = v.lost > 0 ? missingIds(cEnd.sink, pipeline, ackLog) : [];
    const lostInStream = await countGoneFromStream(nc, lostIds);
    if (v.lost > 0)
      mark(
        `lost ${v.lost}: ${lostInStream} no longer in the stream, ${v.lost - lostInStream} in it but never committed`,
      );
    const historyMismatches = countHistoryMismatches(dir);
    const seqConflicts = countSeqConflicts(cEnd.sink, pipeline);
    const div = divergence(cEnd.sink, cfg.pipelines[0]!, ackLog, lostIds);
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

/** Where JetStream acknowledged a record: its shard's stream and the sequence in it. */
export interface StreamPosition {
  stream: string;
  seq: number;
}

const positionKey = (p: StreamPosition): string => `${p.stream}/${p.seq}`;

/** Acknowledged record id -> the stream position its PubAck named, from an ack log. */
function ackedPositions(ackLog: string): Map<string, StreamPosition> {
  const acked = new Map<string, StreamPosition>();
  for (const line of readFileSync(ackLog, "utf8").split("\n")) {
    if (!line.startsWith("{")) continue;
    const r = JSON.parse(line) as { id: string; status: string; stream?: string | null; seq: number | null };
    if (r.status === "acked" && r.seq !== null && r.stream) acked.set(r.id, { stream: r.stream, seq: r.seq });
  }
  return acked;
}

/** Acknowledged records (id, stream position) that are not in the sink. */
export function missingIds(
  sink: string,
  pipeline: string,
  ackLog: string,
): Array<{ id: string } & StreamPosition> {
  const acked = ackedPositions(ackLog);
  const db = new Database(sink, { readonly: true });
  try {
    const have = new Set(
      (db.prepare(`SELECT DISTINCT record_id FROM "${pipeline}"`).all() as Array<{ record_id: string }>).map(
        (r) => r.record_id,
      ),
    );
    return [...acked].filter(([id]) => !have.has(id)).map(([id, at]) => ({ id, ...at }));
  } finally {
    db.close();
  }
}

/**
 * Compares the sink with what JetStream acknowledged: positions where the sink holds another
 * record than the acknowledged one, and the lost (given with their acknowledged position) and
 * duplicated records those explain.
 */
export function divergence(
  sink: string,
  p: PipelineStreams,
  ackLog: string,
  lost: ReadonlyArray<{ id: string } & StreamPosition>,
): { conflicts: number; lost: number; duplicated: number } {
  const ackedAt = new Map<string, string>();
  for (const [id, at] of ackedPositions(ackLog)) ackedAt.set(positionKey(at), id);
  const rowKey = (r: { shard: number; seq: number }): string =>
    positionKey({ stream: inputStream(p, r.shard), seq: r.seq });
  const db = new Database(sink, { readonly: true });
  try {
    const conflicts = new Set<string>();
    const rows = db
      .prepare(`SELECT shard, source_seq AS seq, record_id AS id FROM "${p.name}"`)
      .iterate() as Iterable<{ shard: number; seq: number; id: string }>;
    for (const r of rows) {
      const acked = ackedAt.get(rowKey(r));
      if (acked !== undefined && acked !== r.id) conflicts.add(rowKey(r));
    }
    if (conflicts.size === 0) return { conflicts: 0, lost: 0, duplicated: 0 };
    const dupRows = db
      .prepare(
        `SELECT record_id AS id, shard, source_seq AS seq FROM "${p.name}" WHERE record_id IN
         (SELECT record_id FROM "${p.name}" GROUP BY record_id HAVING COUNT(*) > 1)`,
      )
      .all() as Array<{ id: string; shard: number; seq: number }>;
    const dupExplained = new Set(dupRows.filter((r) => conflicts.has(rowKey(r))).map((r) => r.id));
    return {
      conflicts: conflicts.size,
      lost: lost.filter((l) => conflicts.has(positionKey(l))).length,
      duplicated: dupExplained.size,
    };
  } finally {
    db.close();
  }
}

/** Acquisitions that found the stream's history changed, from the workers' logs in `dir/logs`. */
export function countHistoryMismatches(dir: string): number {
  const logs = join(dir, "logs");
  if (!existsSync(logs)) return 0;
  let n = 0;
  for (const f of readdirSync(logs)) {
    if (!/^w\d+\.log$/.test(f)) continue;
    for (const line of readFileSync(join(logs, f), "utf8").split("\n"))
      if (line.includes("stream history changed under the checkpoint")) n++;
  }
  return n;
}

/** Stream positions at which the sink holds two different records (two histories were read). */
export function countSeqConflicts(sink: string, pipeline: string): number {
  const db = new Database(sink, { readonly: true });
  try {
    const r = db
      .prepare(
        `SELECT COUNT(*) AS n FROM (SELECT shard, source_seq FROM "${pipeline}" GROUP BY shard, source_seq HAVING COUNT(DISTINCT record_id) > 1)`,
      )
      .get() as { n: number };
    return r.n;
  } finally {
    db.close();
  }
}

/** How many of `lost` their stream no longer holds at the position it acknowledged. */
export async function countGoneFromStream(
  nc: NatsConnection,
  lost: ReadonlyArray<{ id: string } & StreamPosition>,
): Promise<number> {
  if (lost.length === 0) return 0;
  const jsm = await jetstreamManager(nc, { timeout: 5_000 });
  let gone = 0;
  for (const { id, stream, seq } of lost.slice(0, 1_000)) {
    const m = await jsm.streams.getMessage(stream, { seq }).catch(() => null);
    if (!m || m.header?.get("Nats-Msg-Id") !== id) gone++;
  }
  return gone;
}
