/**
 * Failover and rebalance speed on a running local cluster under load, as the sink saw it:
 * every time below runs from the fault (a SIGKILL, a worker joining) to a commit time
 * (`committed_at`, the sink's wall clock on the same host).
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";
import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import type { SluiceConfig } from "../../shared/contract/config.js";
import type { SinkInspector } from "../../shared/contract/ports.js";
import { Buckets } from "../../shared/contract/wire.js";
import type { LeaderRecord } from "../../shared/core/leader-election.js";
import { type ClusterView, LEADER_KEY, VIEW_KEY } from "../../shared/runtime/coordinator-runtime.js";
import { readClusterFile } from "../cli/cluster-file.js";
import { measureFailover } from "../cli/failover.js";
import { addWorker, removeWorker, restartProcess } from "../cli/local-cluster.js";
import { isSettled } from "../cli/readiness.js";
import { gatherStatus, type StatusReport } from "../cli/status.js";
import { waitUntil } from "../cli/wait.js";
import { StealMeter, stealText } from "./host-cpu.js";

export interface ClusterHandle {
  dir: string;
  nc: NatsConnection;
  cfg: SluiceConfig;
  sink: SinkInspector;
  pipeline: string;
}

const shardNo = (key: string): number => Number(key.slice(key.lastIndexOf(".") + 1));

/** Commit times (ms) of one shard since `fromMs`, one per committed batch, with the committer. */
async function commitTimes(
  sink: SinkInspector,
  pipeline: string,
  shard: number,
  fromMs: number,
): Promise<Array<{ at: number; worker: string; epoch: number }>> {
  const batches = new Map<string, { at: number; worker: string; epoch: number }>();
  for (const r of await sink.rows(pipeline, { shard, sinceMs: fromMs })) {
    batches.set(`${r.committedAt}/${r.worker}/${r.epoch}`, {
      at: r.committedAt,
      worker: r.worker,
      epoch: r.epoch,
    });
  }
  return [...batches.values()].sort((a, b) => a.at - b.at);
}

/**
 * Waits until the assignment is settled over exactly `workers`, each owning a shard. Checked
 * every 250 ms: one check is some 40 JetStream API requests (every shard's entry and consumer),
 * and checking every 50 ms loaded the cluster during the very hand-offs being measured. The
 * figures come from the sink's commit times, so how often this checks does not change them.
 */
function settledOver(h: ClusterHandle, workers: readonly string[]): Promise<StatusReport> {
  return waitUntil(
    `every shard active on ${workers.join(", ")}`,
    60_000,
    async () => {
      const s = await gatherStatus(h.nc, h.cfg, h.sink);
      if (!isSettled(s, workers)) return undefined;
      const owners = new Set(s.shards.map((r) => r.owner));
      return workers.every((w) => owners.has(w)) ? s : undefined;
    },
    250,
  );
}

/** Longest time between consecutive commits in `times` (ms). */
export function longestGap(times: readonly number[]): number {
  let gap = 0;
  for (let i = 1; i < times.length; i++) gap = Math.max(gap, times[i]! - times[i - 1]!);
  return gap;
}

/**
 * SIGKILL of the worker owning the most shards, until every one of its shards committed
 * elsewhere; then the worker is restarted and the cluster settles before the next trial.
 */
export async function workerKillTrials(
  h: ClusterHandle,
  trials: number,
  log: (s: string) => void,
): Promise<number[]> {
  const out: number[] = [];
  for (let t = 0; t < trials; t++) {
    const before = await settledOver(
      h,
      readClusterFile(h.dir).workers.map((w) => w.id),
    );
    const counts = new Map<string, number[]>();
    for (const r of before.shards) {
      if (r.owner) counts.set(r.owner, [...(counts.get(r.owner) ?? []), shardNo(r.shard)]);
    }
    const [victim, shards] = [...counts].sort((a, b) => b[1].length - a[1].length)[0]!;
    const rec = readClusterFile(h.dir).workers.find((w) => w.id === victim);
    if (!rec) throw new Error(`worker ${victim} is not in cluster.json`);
    const killedAt = Date.now();
    process.kill(rec.pid, "SIGKILL");
    const f = await waitUntil(
      `the shards of ${victim} to commit elsewhere`,
      30_000,
      async () => {
        const m = await measureFailover(h.sink, h.pipeline, shards, victim, killedAt);
        return m.maxMs === null ? undefined : m;
      },
      50,
    );
    out.push(f.maxMs! / 1000);
    log(
      `worker kill ${t + 1}/${trials}: ${victim} (${shards.length} shards) ${(f.maxMs! / 1000).toFixed(2)} s`,
    );
    await restartProcess(h.dir, victim, { kill: true });
  }
  await settledOver(
    h,
    readClusterFile(h.dir).workers.map((w) => w.id),
  );
  return out;
}

export interface ScaleOutTrial {
  /** Longest commit gap of a moved shard: old owner's last commit to new owner's first, s. */
  movedMaxGapS: number;
  /** Longest gap between commits of any shard that did not move, during the rebalance, s. */
  unmovedMaxGapS: number;
  moved: number;
  /** Shards that kept owner and epoch. */
  unmoved: number;
  /** Unmoved shards whose epoch changed anyway (must be 0). */
  unmovedEpochChanges: number;
  /** Longest gap between commits of any shard in a window just before the join, s. */
  baselineMaxGapS: number;
  /** CPU steal on the host from the join until every shard committed again, % (null: unknown). */
  hostStealPct: number | null;
}

/** A fourth worker joins a settled 3-worker cluster; then it leaves again (graceful). */
export async function scaleOutTrials(
  h: ClusterHandle,
  trials: number,
  log: (s: string) => void,
): Promise<ScaleOutTrial[]> {
  const out: ScaleOutTrial[] = [];
  for (let t = 0; t < trials; t++) {
    const workers = readClusterFile(h.dir).workers.map((w) => w.id);
    const before = await settledOver(h, workers);
    // A window without any rebalance, for comparison with the one measured below.
    const quietFrom = Date.now();
    await new Promise((r) => setTimeout(r, 3_000));
    const joinAt = Date.now();
    let baseline = 0;
    for (const r of before.shards) {
      const times = (await commitTimes(h.sink, h.pipeline, shardNo(r.shard), quietFrom)).filter(
        (x) => x.at < joinAt,
      );
      baseline = Math.max(baseline, longestGap(times.map((x) => x.at)));
    }
    const steal = new StealMeter();
    const added = addWorker(h.dir);
    const after = await settledOver(h, [...workers, added.id]);
    // Let every shard commit a few more batches under its new owner before reading gaps.
    const settledAt = Date.now();
    await waitUntil("a commit after the rebalance on every shard", 10_000, async () => {
      for (const r of after.shards)
        if ((await commitTimes(h.sink, h.pipeline, shardNo(r.shard), settledAt)).length === 0)
          return undefined;
      return true;
    });
    const hostStealPct = steal.percent();
    const prev = new Map(before.shards.map((r) => [r.shard, r]));
    let movedMax = 0;
    let unmovedMax = 0;
    let moved = 0;
    let unmoved = 0;
    let epochChanges = 0;
    for (const r of after.shards) {
      const p = prev.get(r.shard)!;
      const times = await commitTimes(h.sink, h.pipeline, shardNo(r.shard), joinAt - 2_000);
      if (p.owner !== r.owner) {
        moved++;
        const firstNew = times.find((x) => x.worker === r.owner && x.at >= joinAt);
        const lastOld = [...times]
          .reverse()
          .find((x) => x.worker === p.owner && (!firstNew || x.at <= firstNew.at));
        if (firstNew && lastOld) movedMax = Math.max(movedMax, firstNew.at - lastOld.at);
      } else {
        unmoved++;
        if (p.epoch !== r.epoch) epochChanges++;
        unmovedMax = Math.max(
          unmovedMax,
          longestGap(times.filter((x) => x.at >= joinAt - 1_000).map((x) => x.at)),
        );
      }
    }
    const trial = {
      baselineMaxGapS: baseline / 1000,
      movedMaxGapS: movedMax / 1000,
      unmovedMaxGapS: unmovedMax / 1000,
      moved,
      unmoved,
      unmovedEpochChanges: epochChanges,
      hostStealPct,
    };
    out.push(trial);
    log(
      `scale-out ${t + 1}/${trials}: ${moved} shards moved, longest gap ${trial.movedMaxGapS.toFixed(3)} s; ` +
        `${unmoved} unmoved, longest gap ${trial.unmovedMaxGapS.toFixed(3)} s ` +
        `(${trial.baselineMaxGapS.toFixed(3)} s without a join), epoch changes ${epochChanges}; host CPU steal ${stealText(hostStealPct)}`,
    );
    await removeWorker(h.dir, added.id);
  }
  return out;
}

/**
 * SIGKILL of the leader coordinator until another coordinator publishes its first view as
 * leader (its first act); the killed one is restarted as a standby.
 */
export async function leaderKillTrials(
  h: ClusterHandle,
  trials: number,
  log: (s: string) => void,
): Promise<number[]> {
  const control = await new Kvm(h.nc).open(Buckets.coordinator);
  const dec = new TextDecoder();
  const read = async <T>(key: string): Promise<T | null> => {
    const e = await control.get(key);
    return e?.value?.length ? (JSON.parse(dec.decode(e.value)) as T) : null;
  };
  const out: number[] = [];
  for (let t = 0; t < trials; t++) {
    const leader = await waitUntil(
      "a leader",
      30_000,
      async () => (await read<LeaderRecord>(LEADER_KEY)) ?? undefined,
    );
    const rec = readClusterFile(h.dir).coordinators.find((c) => c.id === leader.holder);
    if (!rec) throw new Error(`leader ${leader.holder} is not in cluster.json`);
    const killedAt = Date.now();
    process.kill(rec.pid, "SIGKILL");
    await waitUntil(
      "a new leader's first view",
      30_000,
      async () => {
        const v = await read<ClusterView>(VIEW_KEY);
        return v && v.leader !== leader.holder ? v : undefined;
      },
      10,
    );
    const s = (Date.now() - killedAt) / 1000;
    out.push(s);
    log(`leader kill ${t + 1}/${trials}: ${leader.holder} replaced in ${s.toFixed(2)} s`);
    const logFile = join(h.dir, "logs", `${leader.holder}.log`);
    const starts = (): number => readFileSync(logFile, "utf8").split('"msg":"coordinator started"').length;
    const before = starts();
    await restartProcess(h.dir, leader.holder, { kill: true });
    // The restarted coordinator must be a running standby before the next leader dies.
    await waitUntil(
      "the restarted coordinator to start",
      10_000,
      () => (starts() > before ? true : undefined),
      20,
    );
  }
  return out;
}
