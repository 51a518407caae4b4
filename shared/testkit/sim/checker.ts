/**
 * The simulator's invariants, checked as every event happens (and once more at the end).
 *
 * Safety
 * - epoch: only the shard's fenced (current) epoch commits; the fenced epoch never decreases.
 * - checkpoint: a shard's committed sequence never goes backwards and has no gaps: every
 *   record of the shard up to the checkpoint is committed or dead-lettered.
 * - exactly once: no record is committed twice; nothing is committed that was not published;
 *   by the end every published record is committed (or dead-lettered if malformed).
 * - dead letters: no record is both committed and dead-lettered; one the schema may reject is
 *   one or the other by the end.
 * - dedupe: no business key is committed twice; by the end each key one of whose records was
 *   not dead-lettered is committed once (its other records dropped as duplicates).
 * - watermark: a committed record is flagged late exactly when its event time lies strictly
 *   below the highest event time of the records before it in its shard's stream order (those
 *   not dead-lettered) less the allowed lateness.
 * - merge: the merge's table holds, per key, the record its policy ranks highest among the
 *   branches' committed on-time records (late by the rule above, computed here); after the late
 *   records are reconciled, the highest among all committed records. The policy is evaluated
 *   here on its own (not with the sink's comparison), from what was published.
 * - zombies: a worker resuming from a pause longer than its lease never sends a commit at an
 *   epoch superseded before it resumed (it re-checks first); a graceful hand-off never has
 *   its old owner's later commits fenced (the new owner waits for the release).
 * Liveness (after every fault heals): every shard owned by a live worker and committed to
 * the end of its stream, and the assignment balanced.
 */

import type { SinkCommitEvent } from "../../adapters/sink/memory-sink.js";
import { type ShardRef, shardKey } from "../../contract/ownership.js";
import type { MergeRow } from "../../contract/ports.js";

export interface PublishedRecord {
  id: string;
  pipeline: string;
  /** The key it was published under. */
  key: string;
  shard: number;
  seq: number;
  malformed: boolean;
  /** Valid or not by the schema version in force: committed or dead-lettered, never both. */
  schemaDependent?: boolean;
  /** The business key the pipeline deduplicates by: exactly one record per key is committed. */
  businessKey?: string;
  /** The record's event time, ms, when the pipeline reads one. */
  eventTime?: number;
}

export interface Violation {
  at: number;
  invariant: string;
  detail: string;
}

/** A merge of the simulated branches, as the checker evaluates its policy. */
export interface SimMerge {
  name: string;
  policy: "latest" | "priority";
  /** Branch pipeline -> its priority. */
  priorities: ReadonlyMap<string, number>;
}

interface Supersession {
  at: number;
  graceful: boolean;
}

export class Checker {
  readonly violations: Violation[] = [];
  readonly published = new Map<string, PublishedRecord>();
  /** Shard key (`pipeline.shard`) -> stream sequences of its records, ascending. */
  private readonly shardSeqs = new Map<string, number[]>();
  private readonly bySeq = new Map<number, PublishedRecord>();
  private readonly committed = new Map<string, number>();
  /** Record id -> whether it was committed flagged late. */
  private readonly lateFlags = new Map<string, boolean>();
  /** Business key -> records committed with it. */
  private readonly committedKeys = new Map<string, number>();
  /** Record id -> whether the watermark rule makes it late (set by the end-of-run check). */
  private readonly lateByRule = new Map<string, boolean>();
  private readonly fenced = new Map<string, number>();
  /** `shardKey@epoch` -> when a higher epoch replaced it, and whether that was a graceful hand-off. */
  private readonly superseded = new Map<string, Supersession>();
  private readonly currentEpoch = new Map<string, number>();
  /** `shardKey@epoch` -> hand-off reason of the coordinator write that created the epoch. */
  readonly reasons = new Map<string, string>();
  /** worker -> pause intervals [from, to]. */
  readonly pauses = new Map<string, Array<[number, number]>>();
  fencedRejects = 0;

  constructor(
    private readonly now: () => number,
    private readonly leaseTtlMs: number,
    private readonly isDeadLettered: (ref: ShardRef, seq: number) => boolean,
    /** The pipeline's allowed lateness, ms, when it marks late records. */
    private readonly allowedLatenessMs?: number,
  ) {}

  private fail(invariant: string, detail: string): void {
    this.violations.push({ at: this.now(), invariant, detail });
  }

  get ok(): boolean {
    return this.violations.length === 0;
  }

  onPublish(r: PublishedRecord): void {
    if (this.published.has(r.id)) return;
    this.published.set(r.id, r);
    this.bySeq.set(r.seq, r);
    const sk = shardKey(r);
    const seqs = this.shardSeqs.get(sk) ?? [];
    this.shardSeqs.set(sk, seqs);
    seqs.push(r.seq);
  }

  lastSeqOf(shard: string): number {
    const s = this.shardSeqs.get(shard);
    return s && s.length > 0 ? s[s.length - 1]! : 0;
  }

  /** `shardKey@epoch` -> worker running that lease (acquiring to its end). */
  private readonly running = new Map<string, string>();

  onLeaseStart(worker: string, shard: string, epoch: number): void {
    this.running.set(`${shard}@${epoch}`, worker);
  }

  onLeaseEnd(worker: string, shard: string, epoch: number): void {
    if (this.running.get(`${shard}@${epoch}`) === worker) this.running.delete(`${shard}@${epoch}`);
  }

  /** A crashed worker's leases end with it. */
  onCrash(worker: string): void {
    for (const [k, w] of this.running) if (w === worker) this.running.delete(k);
  }

  /** An assignment entry was written; the epoch's hand-off reason was recorded in `reasons`. */
  onAssignment(shard: string, epoch: number, at: number): void {
    const prev = this.currentEpoch.get(shard) ?? 0;
    if (epoch <= prev) return;
    const reason = this.reasons.get(`${shard}@${epoch}`) ?? "unknown";
    const graceful = reason === "released" || reason === "rebalance";
    for (let e = prev; e < epoch; e++) {
      if (!this.superseded.has(`${shard}@${e}`)) this.superseded.set(`${shard}@${e}`, { at, graceful });
      const still = this.running.get(`${shard}@${e}`);
      if (graceful && still) {
        this.fail(
          "graceful-handoff",
          `shard ${shard}: epoch ${epoch} assigned by a graceful hand-off while ${still} still runs epoch ${e}`,
        );
      }
    }
    this.currentEpoch.set(shard, epoch);
  }

  /** The sink's fenced epoch of a shard never decreases. */
  onFence(ref: ShardRef, after: { epoch: number }): void {
    const sk = shardKey(ref);
    const prev = this.fenced.get(sk) ?? 0;
    if (after.epoch < prev)
      this.fail("epoch", `shard ${sk}: fenced epoch went back from ${prev} to ${after.epoch}`);
    this.fenced.set(sk, Math.max(prev, after.epoch));
  }

  onCommit(e: SinkCommitEvent): void {
    const shard = shardKey(e.ref);
    if (e.epoch !== e.fencedEpoch) {
      this.fail(
        "epoch",
        `shard ${shard}: commit by ${e.worker} at epoch ${e.epoch} accepted while the sink's epoch is ${e.fencedEpoch}`,
      );
    }
    if (e.after.seq < e.before.seq) {
      this.fail("checkpoint", `shard ${shard}: checkpoint went back from ${e.before.seq} to ${e.after.seq}`);
    }
    const written = new Set(e.written.map((r) => r.sourceSeq));
    // Dropped by the sink's dedupe in this very commit: passed, and accounted for by its key.
    for (const r of e.deduplicated ?? []) written.add(r.sourceSeq);
    for (const seq of this.seqsBetween(shard, e.before.seq, e.after.seq)) {
      if (written.has(seq)) continue;
      const rec = this.bySeq.get(seq);
      if (rec && !((rec.malformed || rec.schemaDependent) && this.isDeadLettered(e.ref, seq))) {
        this.fail(
          "checkpoint",
          `shard ${shard}: checkpoint passed seq ${seq} (${rec.id}) without committing it`,
        );
      }
    }
    for (const r of e.written) {
      const rec = this.published.get(r.recordId);
      if (!rec) this.fail("exactly-once", `unexpected record ${r.recordId} committed by ${e.worker}`);
      if (this.isDeadLettered(e.ref, r.sourceSeq))
        this.fail(
          "dead-letter",
          `record ${r.recordId} (shard ${shard}, seq ${r.sourceSeq}) committed by ${e.worker} at epoch ${e.epoch} after it was dead-lettered`,
        );
      // Each pipeline deduplicates its own keys.
      const bk = rec?.businessKey === undefined ? undefined : `${rec.pipeline}/${rec.businessKey}`;
      if (bk !== undefined) {
        const k = (this.committedKeys.get(bk) ?? 0) + 1;
        this.committedKeys.set(bk, k);
        if (k > 1)
          this.fail(
            "dedupe",
            `business key ${bk} committed twice (last ${r.recordId} by ${e.worker} at epoch ${e.epoch})`,
          );
      }
      const n = (this.committed.get(r.recordId) ?? 0) + 1;
      this.committed.set(r.recordId, n);
      this.lateFlags.set(r.recordId, r.late !== undefined);
      if (n > 1)
        this.fail(
          "exactly-once",
          `record ${r.recordId} committed twice (last by ${e.worker} at epoch ${e.epoch})`,
        );
    }
  }

  /** A commit sent at `sentAt` was rejected by the fence. */
  onReject(sentAt: number, ref: ShardRef, epoch: number, worker: string): void {
    this.fencedRejects++;
    const sup = this.superseded.get(`${shardKey(ref)}@${epoch}`);
    if (!sup || sentAt <= sup.at) return; // in flight before the hand-off: the fence's job
    if (sup.graceful) {
      this.fail(
        "graceful-handoff",
        `shard ${shardKey(ref)}: ${worker} sent a commit at epoch ${epoch} at ${sentAt} after a graceful hand-off at ${sup.at}`,
      );
    }
    for (const [from, to] of this.pauses.get(worker) ?? []) {
      if (to - from > this.leaseTtlMs && sup.at < to && sentAt >= to) {
        this.fail(
          "lease-recheck",
          `shard ${shardKey(ref)}: ${worker} resumed at ${to} from a ${to - from} ms pause and sent a commit at superseded epoch ${epoch} without re-checking`,
        );
      }
    }
  }

  private *seqsBetween(shard: string, after: number, upTo: number): Generator<number> {
    const seqs = this.shardSeqs.get(shard) ?? [];
    let lo = 0;
    let hi = seqs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (seqs[mid]! <= after) lo = mid + 1;
      else hi = mid;
    }
    for (let i = lo; i < seqs.length && seqs[i]! <= upTo; i++) yield seqs[i]!;
  }

  /** End of run: each committed record's late flag is what the watermark rule says. */
  private checkLateness(allowed: number): void {
    let wrong = 0;
    for (const [shard, seqs] of this.shardSeqs) {
      let max: number | null = null;
      for (const seq of seqs) {
        const r = this.bySeq.get(seq);
        if (!r || r.malformed || r.eventTime === undefined) continue;
        if (this.isDeadLettered(r, seq)) continue;
        const late = max !== null && r.eventTime < max - allowed;
        this.lateByRule.set(r.id, late);
        const flagged = this.lateFlags.get(r.id);
        if (flagged !== undefined && flagged !== late && ++wrong <= 3)
          this.fail(
            "watermark",
            `record ${r.id} (shard ${shard}, seq ${seq}, event time ${r.eventTime}) committed ${flagged ? "late" : "on time"}, but the watermark before it is ${max === null ? "none" : max - allowed}`,
          );
        if (max === null || r.eventTime > max) max = r.eventTime;
      }
    }
  }

  /** End of run: everything published is committed exactly once or dead-lettered. */
  finalCheck(): { lost: number; duplicated: number } {
    if (this.allowedLatenessMs !== undefined) this.checkLateness(this.allowedLatenessMs);
    let lost = 0;
    let duplicated = 0;
    for (const r of this.published.values()) {
      const n = this.committed.get(r.id) ?? 0;
      if (r.malformed) {
        if (n > 0) this.fail("exactly-once", `malformed record ${r.id} was committed`);
        else if (!this.isDeadLettered(r, r.seq)) {
          lost++;
          if (lost <= 3)
            this.fail("exactly-once", `malformed record ${r.id} neither committed nor dead-lettered`);
        }
        continue;
      }
      const dead = this.isDeadLettered(r, r.seq);
      if (r.schemaDependent && n > 0 && dead)
        this.fail("dead-letter", `record ${r.id} was both committed and dead-lettered`);
      if (r.schemaDependent && dead) continue;
      // Dropped as a duplicate: its key was committed by another record.
      if (n === 0 && r.businessKey !== undefined) {
        if ((this.committedKeys.get(`${r.pipeline}/${r.businessKey}`) ?? 0) > 0) continue;
        if (!dead) {
          lost++;
          if (lost <= 3)
            this.fail("dedupe", `business key ${r.businessKey} never committed (record ${r.id} dropped)`);
        }
        continue;
      }
      if (n === 0) {
        lost++;
        if (lost <= 3)
          this.fail("exactly-once", `record ${r.id} (shard ${r.shard}, seq ${r.seq}) never committed`);
      }
      if (n > 1) duplicated++;
    }
    return { lost, duplicated };
  }

  /**
   * The merge's table against its policy over the branches' committed records: the on-time
   * ones (`reconciled` false), or all of them once the late ones were reconciled. Run after
   * `finalCheck`, which decides lateness by the watermark rule.
   */
  checkMerge(m: SimMerge, table: readonly MergeRow[], reconciled: boolean): void {
    const when = reconciled ? "after reconciliation" : "before reconciliation";
    const rank = (r: PublishedRecord): [number, number] => {
      const p = m.priorities.get(r.pipeline)!;
      return m.policy === "latest" ? [r.eventTime!, p] : [p, r.eventTime!];
    };
    // Highest first: the two ranks, then the record id's UTF-8 bytes.
    const beats = (a: PublishedRecord, b: PublishedRecord): boolean => {
      const [a1, a2] = rank(a);
      const [b1, b2] = rank(b);
      if (a1 !== b1) return a1 > b1;
      if (a2 !== b2) return a2 > b2;
      return Buffer.compare(Buffer.from(a.id), Buffer.from(b.id)) > 0;
    };
    const expected = new Map<string, PublishedRecord>();
    for (const r of this.published.values()) {
      if (!m.priorities.has(r.pipeline) || r.eventTime === undefined) continue;
      if ((this.committed.get(r.id) ?? 0) === 0) continue;
      if (!reconciled && this.lateByRule.get(r.id) !== false) continue;
      const cur = expected.get(r.key);
      if (!cur || beats(r, cur)) expected.set(r.key, r);
    }
    let wrong = 0;
    const seen = new Set<string>();
    for (const row of table) {
      seen.add(row.key);
      const want = expected.get(row.key);
      if (want?.id === row.recordId && want.pipeline === row.pipeline) continue;
      if (++wrong <= 3)
        this.fail(
          "merge",
          `${m.name} ${when}: key ${row.key} holds ${row.recordId} of ${row.pipeline} (event time ${row.eventTime}), but ${m.policy} ranks ${want ? `${want.id} of ${want.pipeline} (event time ${want.eventTime})` : "no record"} highest`,
        );
    }
    for (const [key, want] of expected)
      if (!seen.has(key) && ++wrong <= 3)
        this.fail(
          "merge",
          `${m.name} ${when}: key ${key} has no row, but ${want.id} of ${want.pipeline} was committed`,
        );
  }
}
