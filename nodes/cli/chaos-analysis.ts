/**
 * What `sluice chaos` reads off a finished run: how long each fault took to recover from, and
 * which of the records JetStream acknowledged the sink lacks, holds twice, or holds at a
 * position where the stream acknowledged another (the evidence of a broker that served two
 * histories). Everything here works on the sink's rows as its inspector returns them.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { CommittedRow } from "../../shared/contract/ports.js";
import { inputStream, type PipelineStreams } from "../../shared/contract/wire.js";
import type { FaultRecord } from "./chaos-faults.js";

export const median = (xs: number[]): number | null => {
  if (xs.length === 0) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/**
 * Recovery: for each affected shard, the first commit at or after injection (by another worker
 * if one was hit); the slowest shard's, s. Null when a shard never committed again.
 */
export function recoveryOf(rows: readonly CommittedRow[], f: FaultRecord): number | null {
  if (f.shards.length === 0) return null;
  const exclude = f.type === "worker-kill" || f.type === "worker-pause" ? f.target : "";
  const first = new Map<number, number>();
  for (const r of rows) {
    if (r.committedAt < f.injected_at || r.worker === exclude) continue;
    const t = first.get(r.shard);
    if (t === undefined || r.committedAt < t) first.set(r.shard, r.committedAt);
  }
  let worst = 0;
  for (const key of f.shards) {
    const t = first.get(Number(key.slice(key.lastIndexOf(".") + 1)));
    if (t === undefined) return null;
    worst = Math.max(worst, t - f.injected_at);
  }
  return worst / 1000;
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
  rows: readonly CommittedRow[],
  ackLog: string,
): Array<{ id: string } & StreamPosition> {
  const have = new Set(rows.map((r) => r.recordId));
  return [...ackedPositions(ackLog)].filter(([id]) => !have.has(id)).map(([id, at]) => ({ id, ...at }));
}

/**
 * Compares the sink with what JetStream acknowledged: positions where the sink holds another
 * record than the acknowledged one, and the lost (given with their acknowledged position) and
 * duplicated records those explain.
 */
export function divergence(
  rows: readonly CommittedRow[],
  p: PipelineStreams,
  ackLog: string,
  lost: ReadonlyArray<{ id: string } & StreamPosition>,
): { conflicts: number; lost: number; duplicated: number } {
  const ackedAt = new Map<string, string>();
  for (const [id, at] of ackedPositions(ackLog)) ackedAt.set(positionKey(at), id);
  const rowKey = (r: CommittedRow): string =>
    positionKey({ stream: inputStream(p, r.shard), seq: r.sourceSeq });
  const conflicts = new Set<string>();
  for (const r of rows) {
    const acked = ackedAt.get(rowKey(r));
    if (acked !== undefined && acked !== r.recordId) conflicts.add(rowKey(r));
  }
  if (conflicts.size === 0) return { conflicts: 0, lost: 0, duplicated: 0 };
  const count = new Map<string, number>();
  for (const r of rows) count.set(r.recordId, (count.get(r.recordId) ?? 0) + 1);
  const dupExplained = new Set(
    rows.filter((r) => (count.get(r.recordId) ?? 0) > 1 && conflicts.has(rowKey(r))).map((r) => r.recordId),
  );
  return {
    conflicts: conflicts.size,
    lost: lost.filter((l) => conflicts.has(positionKey(l))).length,
    duplicated: dupExplained.size,
  };
}

/** Stream positions at which the sink holds two different records (two histories were read). */
export function countSeqConflicts(rows: readonly CommittedRow[]): number {
  const at = new Map<string, string>();
  const conflicts = new Set<string>();
  for (const r of rows) {
    const k = `${r.shard}/${r.sourceSeq}`;
    const id = at.get(k);
    if (id === undefined) at.set(k, r.recordId);
    else if (id !== r.recordId) conflicts.add(k);
  }
  return conflicts.size;
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
