/**
 * The guard against a stream whose history changed under the sink's checkpoint.
 *
 * Checkpoints are stream sequences, sound only while every replica numbers records alike. The
 * sink keeps the fingerprint (record id) of the record at the checkpoint's sequence, and a new
 * owner opens its consumer at that sequence: the first delivery must be that record. If it is
 * not, the stream's history changed (a JetStream replica that diverged after a fault numbers
 * records differently): the consumer is reopened `reconcileWindowMs` of stream time earlier
 * and the batches that follow commit by record id (rows the sink already holds are dropped, the
 * rest written even below the checkpoint) until they are past both the checkpoint and the
 * window, the span in which a producer's retry can have stored a record at a second position.
 */
import { messageFingerprint } from "../contract/codec.js";
import type { ShardRef } from "../contract/ownership.js";
import type { HistoryMismatchReport } from "../contract/pipeline-reports.js";
import type { Checkpoint, FeedStart, SinkRow, SourceMessage } from "../contract/ports.js";

/**
 * Where a consumer starts for a checkpoint: at the checkpoint's own record when the sink knows
 * its fingerprint (the first delivery then proves the stream still numbers records as the sink
 * saw them), else just after it.
 */
export function startSeq(cp: Checkpoint): number {
  return cp.seq > 0 && cp.fingerprint !== undefined ? cp.seq : cp.seq + 1;
}

/** Reconciliation after a history mismatch: commit by record id, not by sequence. */
interface Reconciliation {
  /** Record ids the sink holds around the checkpoint; loaded with the first batch. */
  ids: Set<string> | null;
  checkpointSeq: number;
  /** Stream time after which no record can be a displaced copy, ms (null: unknown). */
  untilMs: number | null;
}

/** What the guard decided about a lease's first delivery. */
export type FirstDelivery =
  /** The checkpoint's record, as expected: process the rest (the record itself is acked). */
  | { kind: "confirmed"; rest: SourceMessage[] }
  /** Another record: reopen the feed at `start` and reconcile what it delivers. */
  | { kind: "mismatch"; start: FeedStart; report: HistoryMismatchReport };

export class HistoryGuard {
  /** The checkpoint's sequence and fingerprint, until the first delivery confirmed or refuted them. */
  private verify: { seq: number; fingerprint: string } | null = null;
  private reconciliation: Reconciliation | null = null;

  constructor(
    private readonly ref: ShardRef,
    private readonly epoch: number,
    /** Ms of stream time either side of the checkpoint that a reconciliation compares. */
    private readonly windowMs: number,
    /** Record ids the sink holds for the shard at or above a sequence. */
    private readonly recordIds: (fromSeq: number) => Promise<string[]>,
  ) {}

  /** A lease starts from `cp`: its first delivery is checked when the sink knows a fingerprint. */
  expect(cp: Checkpoint): void {
    this.reconciliation = null;
    this.verify =
      cp.seq > 0 && cp.fingerprint !== undefined ? { seq: cp.seq, fingerprint: cp.fingerprint } : null;
  }

  /** True until the first delivery after `expect` was checked. */
  get pending(): boolean {
    return this.verify !== null;
  }

  /** True while batches commit by record id. */
  get reconciling(): boolean {
    return this.reconciliation !== null;
  }

  /** Checks the first batch after `expect` (call only while `pending`). */
  check(msgs: SourceMessage[]): FirstDelivery {
    const v = this.verify!;
    this.verify = null;
    const first = msgs[0]!;
    const found = messageFingerprint(first);
    if (first.seq === v.seq && found === v.fingerprint) return { kind: "confirmed", rest: msgs.slice(1) };
    const at = first.timestampMs;
    this.reconciliation = {
      ids: null,
      checkpointSeq: v.seq,
      untilMs: at === undefined ? null : at + this.windowMs,
    };
    return {
      kind: "mismatch",
      start: at === undefined ? { seq: 1 } : { timeMs: at - this.windowMs },
      report: {
        ref: this.ref,
        epoch: this.epoch,
        checkpointSeq: v.seq,
        expected: v.fingerprint,
        foundSeq: first.seq,
        found,
        ...(at === undefined ? {} : { rewindToMs: at - this.windowMs }),
      },
    };
  }

  /**
   * In a reconciliation, drops rows the sink already holds (by record id); the rest may sit
   * below the checkpoint. The ids around the checkpoint are loaded once, with the first batch.
   */
  async filter(batch: readonly SourceMessage[], rows: SinkRow[]): Promise<SinkRow[]> {
    const rc = this.reconciliation;
    if (!rc) return rows;
    if (!rc.ids) {
      // Sequences of the diverged history lie near the checkpoint's: take as much again below.
      const first = batch[0]!.seq;
      const span = Math.abs(rc.checkpointSeq - first);
      const from = Math.max(0, Math.min(first, rc.checkpointSeq) - span);
      rc.ids = new Set(await this.recordIds(from));
    }
    const ids = rc.ids;
    return rows.filter((r) => !ids.has(r.recordId));
  }

  /** A batch ending at `last` committed `written`: the reconciliation ends once past its window. */
  committed(last: SourceMessage, written: readonly SinkRow[]): void {
    const rc = this.reconciliation;
    if (!rc) return;
    for (const r of written) rc.ids?.add(r.recordId);
    const ts = last.timestampMs;
    if (last.seq > rc.checkpointSeq && (rc.untilMs === null || ts === undefined || ts > rc.untilMs))
      this.reconciliation = null;
  }
}
