/**
 * An in-memory model of a pipeline's output stream (`OutputStreamStore`) for the simulator: per
 * shard a data subject and a checkpoint subject in one sequence space, conditional appends that
 * fail when the checkpoint subject moved since `expectAt` (JetStream's
 * `Nats-Expected-Last-Subject-Sequence`), atomic (all or nothing), and record ids deduplicated
 * as JetStream's duplicate window would. Synchronous: the simulator puts a network in front.
 */
import { type ShardRef, shardKey } from "../contract/ownership.js";
import type { Checkpoint, OutputCheckpoint, OutputRecord, SinkRow } from "../contract/ports.js";

export interface OutputAppendEvent {
  ref: ShardRef;
  /** The checkpoint before and after the append. */
  before: Checkpoint;
  after: OutputCheckpoint;
  rows: SinkRow[];
}

interface ShardLog {
  /** Stream sequence of the newest checkpoint message (0: none). */
  cpAt: number;
  cp: Checkpoint;
  /** Records in append order. */
  records: Array<{ seq: number; row: SinkRow; epoch: number; worker: string }>;
}

export class MemoryOutputStream {
  private seq = 0;
  private readonly shards = new Map<string, ShardLog>();
  private readonly ids = new Set<string>();

  constructor(private readonly observer: { onAppend?(e: OutputAppendEvent): void } = {}) {}

  private log(ref: ShardRef): ShardLog {
    let l = this.shards.get(shardKey(ref));
    if (!l) {
      l = { cpAt: 0, cp: { epoch: 0, seq: 0 }, records: [] };
      this.shards.set(shardKey(ref), l);
    }
    return l;
  }

  lastCheckpoint(ref: ShardRef): { checkpoint: Checkpoint; streamSeq: number } | null {
    const l = this.log(ref);
    return l.cpAt === 0 ? null : { checkpoint: { ...l.cp }, streamSeq: l.cpAt };
  }

  append(
    ref: ShardRef,
    records: readonly OutputRecord[],
    cp: OutputCheckpoint,
    expectAt: number | undefined,
  ): { ok: true; checkpointSeq: number } | { ok: false } {
    const l = this.log(ref);
    if (expectAt !== undefined && expectAt !== l.cpAt) return { ok: false };
    const before = l.cp;
    const rows: SinkRow[] = [];
    for (const r of records) {
      if (this.ids.has(r.row.recordId)) continue;
      this.ids.add(r.row.recordId);
      l.records.push({ seq: ++this.seq, row: r.row, epoch: r.epoch, worker: r.worker });
      rows.push(r.row);
    }
    l.cpAt = ++this.seq;
    l.cp = {
      epoch: cp.epoch,
      seq: cp.seq,
      ...(cp.fingerprint === undefined ? {} : { fingerprint: cp.fingerprint }),
      ...(cp.state === undefined ? {} : { state: cp.state }),
    };
    this.observer.onAppend?.({ ref, before, after: cp, rows });
    return { ok: true, checkpointSeq: l.cpAt };
  }

  recordIds(ref: ShardRef, fromSeq: number): string[] {
    return this.log(ref)
      .records.filter((r) => r.row.sourceSeq >= fromSeq)
      .map((r) => r.row.recordId);
  }

  /** Records held for a shard, in stream order. */
  records(ref: ShardRef): ReadonlyArray<{ seq: number; row: SinkRow; epoch: number; worker: string }> {
    return this.log(ref).records;
  }
}
