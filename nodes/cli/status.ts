/**
 * `sluice status`: members, leader, every shard's owner, epoch, committed sequence and lag, and
 * each merge's convergence watermark.
 */
import { type ConsumerInfo, jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { consumerNames } from "../../shared/adapters/nats/shard-consumers.js";
import { branchesOf, type SluiceConfig } from "../../shared/contract/config.js";
import type { AssignmentEntry } from "../../shared/contract/ownership.js";
import type { Checkpoint, LateRecord, SinkInspector } from "../../shared/contract/ports.js";
import { Buckets, consumerName, epochConsumer, inputStream } from "../../shared/contract/wire.js";
import type { LeaderRecord } from "../../shared/core/leader-election.js";
import { type MergeStatus, mergeStatus } from "../../shared/core/merge-convergence.js";
import { type SinkHealth, sinkHealth } from "../../shared/core/sink-health.js";
import { DUPLICATES_STATE_KEY } from "../../shared/core/sink-rules.js";
import { formatStageHealth, type StageHealth, stageHealth } from "../../shared/core/stage-health.js";
import { type ClusterView, LEADER_KEY, VIEW_KEY } from "../../shared/runtime/coordinator-runtime.js";
import { formatMergeStatus } from "./merge-commands.js";

export interface ShardStatus {
  shard: string;
  owner: string | null;
  epoch: number;
  phase: string;
  /** The worker the coordinator announced the shard's move to (it is preparing), if any. */
  next: string | null;
  committed: number;
  fencedEpoch: number;
  /** Messages of this shard not yet acked by the owner's consumer; null when unknown. */
  lag: number | null;
  /** Records its dedupe dropped, as counted with its checkpoint. */
  duplicates: number;
}

export interface StatusReport {
  leader: LeaderRecord | null;
  view: ClusterView | null;
  shards: ShardStatus[];
  sink: SinkHealth;
  /** Shards waiting for a stage's input, and the quality rules' counts. */
  stages: StageHealth;
  /** Each merge's convergence from the checkpoints (`rows` not read: null). */
  merges: MergeStatus[];
}

const dec = new TextDecoder();
const json = <T>(b: Uint8Array | undefined): T | null => {
  if (!b || b.length === 0) return null;
  try {
    return JSON.parse(dec.decode(b)) as T;
  } catch {
    return null;
  }
};

export async function gatherStatus(
  nc: NatsConnection,
  cfg: SluiceConfig,
  sink: SinkInspector,
): Promise<StatusReport> {
  const kvm = new Kvm(nc);
  const assignments = await kvm.open(Buckets.assignments);
  const control = await kvm.open(Buckets.coordinator);
  const leader = json<LeaderRecord>((await control.get(LEADER_KEY))?.value);
  const view = json<ClusterView>((await control.get(VIEW_KEY))?.value);
  const jsm = await jetstreamManager(nc, { timeout: 3_000 });
  const checkpoints = new Map<string, Checkpoint>();
  let sinkError: string | null = null;
  try {
    for (const c of await sink.checkpoints()) checkpoints.set(`${c.pipeline}.${c.shard}`, c);
  } catch (err) {
    // The sink did not answer: every checkpoint reads as 0, and the sink as unhealthy.
    sinkError = (err as Error).message;
  }
  const shards: ShardStatus[] = [];
  for (const p of cfg.pipelines) {
    const names = new Map<string, Promise<string[]>>();
    const otherCandidate = async (
      stream: string,
      shard: number,
      epoch: number,
    ): Promise<ConsumerInfo | null> => {
      if (!names.has(stream))
        names.set(
          stream,
          consumerNames(nc, stream).catch(() => []),
        );
      const byName = new Map((await names.get(stream)!).map((n) => [n, n]));
      const found = epochConsumer(byName, p.name, shard, epoch);
      return found ? jsm.consumers.info(stream, found.name).catch(() => null) : null;
    };
    const entries = await Promise.all(
      Array.from({ length: p.shards }, async (_, i) => {
        const key = `${p.name}.${i}`;
        const e = await assignments.get(key);
        const entry = e && e.operation === "PUT" ? json<AssignmentEntry>(e.value) : null;
        let lag: number | null = null;
        if (entry?.owner) {
          const stream = inputStream(p, i);
          // Usually the epoch's first candidate; otherwise the one its stream's names list.
          const ci =
            (await jsm.consumers.info(stream, consumerName(p.name, i, entry.epoch)).catch(() => null)) ??
            (await otherCandidate(stream, i, entry.epoch));
          lag = ci ? ci.num_pending + ci.num_ack_pending : null;
        }
        const cp = checkpoints.get(key);
        return {
          shard: key,
          owner: entry?.owner ?? null,
          epoch: entry?.epoch ?? 0,
          phase: entry?.phase ?? "unassigned",
          next: entry?.next ?? null,
          committed: cp?.seq ?? 0,
          fencedEpoch: cp?.epoch ?? 0,
          lag,
          duplicates: Number(cp?.state?.[DUPLICATES_STATE_KEY] ?? 0),
        } satisfies ShardStatus;
      }),
    );
    shards.push(...entries);
  }
  return {
    leader,
    view,
    shards,
    sink: sinkHealth(view?.members ?? {}, sinkError, Date.now()),
    stages: stageHealth(view?.members ?? {}, Date.now()),
    merges: await mergesOf(cfg, sink, checkpoints),
  };
}

/** The merges' convergence; pending late records unknown (null) when the sink does not answer. */
async function mergesOf(
  cfg: SluiceConfig,
  sink: SinkInspector,
  checkpoints: ReadonlyMap<string, Checkpoint>,
): Promise<MergeStatus[]> {
  if (cfg.merges.length === 0) return [];
  let late: Map<string, LateRecord[]> | null = null;
  if (sink.lateRecords) {
    try {
      late = new Map();
      for (const p of cfg.merges.flatMap((m) => branchesOf(cfg, m.name)))
        late.set(p.name, await sink.lateRecords(p.name));
    } catch {
      late = null;
    }
  }
  return cfg.merges.map((m) =>
    mergeStatus(cfg, m, (pipeline, shard) => checkpoints.get(`${pipeline}.${shard}`), null, late),
  );
}

export function formatStatus(s: StatusReport): string {
  const lines: string[] = [];
  lines.push(`leader: ${s.leader ? `${s.leader.holder} (term ${s.leader.term})` : "none"}`);
  const members = Object.entries(s.view?.members ?? {}).sort(([a], [b]) => a.localeCompare(b));
  lines.push(`members (${members.length}):`);
  for (const [id, m] of members) {
    lines.push(
      `  ${id.padEnd(8)} shards ${String(m.held).padStart(4)}  last heartbeat ${m.lastSeenMsAgo} ms ago${m.leaving ? "  (leaving)" : ""}`,
    );
  }
  const t = Object.entries(s.sink.trouble);
  lines.push(
    s.sink.healthy
      ? "sink: healthy"
      : `sink: UNHEALTHY${s.sink.reachable ? "" : ` (unreachable: ${s.sink.error})`}${t.length ? `; ${t.length} shard(s) cannot commit and wait` : ""}`,
  );
  for (const [shard, x] of t.sort(([a], [b]) => a.localeCompare(b)))
    lines.push(
      `  ${shard.padEnd(12)} on ${x.worker}: failing ${(x.sinceMsAgo / 1000).toFixed(1)} s, circuit ${x.breaker}: ${x.error}`,
    );
  lines.push(...formatStageHealth(s.stages));
  const dups = new Map<string, number>();
  for (const r of s.shards) {
    const p = r.shard.slice(0, r.shard.lastIndexOf("."));
    if (r.duplicates > 0) dups.set(p, (dups.get(p) ?? 0) + r.duplicates);
  }
  for (const [p, n] of dups) lines.push(`duplicates dropped by ${p}'s dedupe: ${n}`);
  for (const m of s.merges) lines.push(formatMergeStatus(m));
  lines.push("shard        owner     epoch  phase      committed      lag");
  for (const r of s.shards) {
    lines.push(
      `${r.shard.padEnd(12)} ${String(r.owner ?? "-").padEnd(9)} ${String(r.epoch).padStart(5)}  ${r.phase.padEnd(9)} ${String(r.committed).padStart(10)} ${String(r.lag ?? "?").padStart(8)}`,
    );
  }
  return lines.join("\n");
}
