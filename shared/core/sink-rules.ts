/**
 * The rules of the fenced sink, once, for every `Sink` implementation: a fence only raises a
 * shard's epoch; a commit is accepted only at the fenced epoch; rows at or below the checkpoint
 * are redeliveries and skipped (unless the caller reconciles below it); the checkpoint never
 * moves back, and its fingerprint and pinned state follow its sequence.
 *
 * A sink supplies storage, not rules: read the checkpoint, write rows, write the checkpoint,
 * all inside one atomic transaction of its own (`SinkTransaction`), and calls `applyFence` /
 * `applyCommit` (or their async twins) inside it. Pure: the functions touch nothing but the
 * transaction they are handed.
 */
import { ErrorCode, fencedError, SluiceError } from "../contract/errors.js";
import type { ShardRef } from "../contract/ownership.js";
import type {
  BatchAuditRow,
  Checkpoint,
  CommitOptions,
  CommitResult,
  PipelineState,
} from "../contract/ports.js";

/**
 * Switches of the rules. Production runs with every rule on; the simulator's checker tests
 * switch the fence off to prove that its invariants catch the zombie commits the fence stops.
 */
export interface SinkRules {
  /** Refuse a fence or a commit below the shard's fenced epoch (default true). */
  fence?: boolean;
}

/** A row as far as the rules care: where it sits in the shard's stream. */
export interface SequencedRow {
  sourceSeq: number;
}

/** The storage of one sink inside one of its atomic transactions. */
export interface SinkTransaction<R extends SequencedRow> {
  /** The shard's checkpoint; `{ epoch: 0, seq: 0 }` when it has none. */
  readCheckpoint(ref: ShardRef): Checkpoint;
  /** Stores rows the rules accepted (possibly none), as written by `worker` at `epoch`. */
  writeRows(ref: ShardRef, epoch: number, worker: string, rows: readonly R[]): void;
  writeCheckpoint(ref: ShardRef, cp: Checkpoint): void;
  /**
   * Of `rows` (in sequence order), those whose business key has no mark within `windowMs`,
   * marking each kept key at its row's time and removing marks the window has left behind;
   * absent when the sink cannot deduplicate.
   */
  dedupe?(ref: ShardRef, rows: readonly R[], windowMs: number): R[];
  /** Appends the commit's audit row; absent when the sink keeps no audit table. */
  writeBatch?(ref: ShardRef, row: BatchAuditRow): void;
}

/** `SinkTransaction` of a sink whose storage answers asynchronously (a database over a socket). */
export interface AsyncSinkTransaction<R extends SequencedRow> {
  readCheckpoint(ref: ShardRef): Promise<Checkpoint>;
  writeRows(ref: ShardRef, epoch: number, worker: string, rows: readonly R[]): Promise<void>;
  writeCheckpoint(ref: ShardRef, cp: Checkpoint): Promise<void>;
  dedupe?(ref: ShardRef, rows: readonly R[], windowMs: number): Promise<R[]>;
  writeBatch?(ref: ShardRef, row: BatchAuditRow): Promise<void>;
}

/** What a commit does to a shard whose checkpoint is `before`. */
export interface CommitPlan<R> {
  /** The rows to write: those above the checkpoint, or all of them when reconciling. */
  write: R[];
  skipped: number;
  /** The checkpoint to store. */
  checkpoint: Checkpoint;
  /** False when the checkpoint is unchanged and need not be written. */
  changed: boolean;
}

/**
 * The checkpoint after a commit at `epoch` whose batch ended at `lastSeq`: the sequence never
 * moves back, and the fingerprint follows the sequence (a reconciliation batch that ends below
 * the checkpoint keeps the checkpoint's own).
 */
export function advanceCheckpoint(
  before: Checkpoint,
  epoch: number,
  lastSeq: number,
  opts: CommitOptions,
): Checkpoint {
  const moved = lastSeq >= before.seq;
  const fingerprint = moved && opts.fingerprint !== undefined ? opts.fingerprint : before.fingerprint;
  const state = moved && opts.state !== undefined ? opts.state : before.state;
  return {
    epoch,
    seq: moved ? lastSeq : before.seq,
    ...(fingerprint === undefined ? {} : { fingerprint }),
    ...(state === undefined ? {} : { state }),
  };
}

/** Whether two pinned states hold the same values (key order aside). */
export function sameState(a: PipelineState | undefined, b: PipelineState | undefined): boolean {
  if (a === b) return true;
  if (a === undefined || b === undefined) return false;
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => a[k] === b[k]);
}

/** The checkpoint to store when the shard is fenced at `epoch`; throws `Fenced` below it. */
export function planFence(
  ref: ShardRef,
  before: Checkpoint,
  epoch: number,
  rules: SinkRules = {},
): Checkpoint {
  if ((rules.fence ?? true) && before.epoch > epoch) throw fencedError(ref.shard, epoch, before.epoch);
  return { ...before, epoch: Math.max(before.epoch, epoch) };
}

/**
 * What a commit at `epoch` of `rows`, ending at `lastSeq`, does. Throws `Fenced` when a higher
 * epoch is fenced (a zombie writer) and `Conflict` when the epoch was never fenced (a commit
 * must follow its own fence, or it could slip in before a newer owner's).
 */
export function planCommit<R extends SequencedRow>(
  ref: ShardRef,
  before: Checkpoint,
  epoch: number,
  rows: readonly R[],
  lastSeq: number,
  opts: CommitOptions = {},
  rules: SinkRules = {},
): CommitPlan<R> {
  if ((rules.fence ?? true) && before.epoch !== epoch) {
    if (before.epoch > epoch) throw fencedError(ref.shard, epoch, before.epoch);
    throw new SluiceError(
      ErrorCode.Conflict,
      `shard ${ref.shard}: commit at epoch ${epoch} before its fence`,
    );
  }
  const floor = opts.belowCheckpoint ? 0 : before.seq;
  const write = floor === 0 ? rows.slice() : rows.filter((r) => r.sourceSeq > floor);
  const checkpoint = advanceCheckpoint(before, before.epoch, lastSeq, opts);
  const changed =
    checkpoint.seq !== before.seq ||
    checkpoint.fingerprint !== before.fingerprint ||
    !sameState(checkpoint.state, before.state);
  return { write, skipped: rows.length - write.length, checkpoint, changed };
}

/**
 * The audit row of a commit from `before` that wrote `written` rows, or null when it records
 * none: no audit asked for, or a commit that took in no record (a redelivery at or below the
 * checkpoint, a commit of pinned state only).
 */
export function auditRow<R>(
  before: Checkpoint,
  plan: CommitPlan<R>,
  epoch: number,
  worker: string,
  lastSeq: number,
  written: number,
  opts?: CommitOptions,
): BatchAuditRow | null {
  const a = opts?.audit;
  if (!a || (plan.checkpoint.seq <= before.seq && plan.write.length === 0)) return null;
  return {
    epoch,
    worker,
    firstSeq: opts?.belowCheckpoint ? a.firstSeq : Math.max(a.firstSeq, before.seq + 1),
    lastSeq,
    rows: written,
    late: a.late,
    deadLettered: a.deadLettered,
    deduplicated: plan.write.length - written,
    configRevision: a.configRevision,
  };
}

/** The commit's answer: the checkpoint as the committing epoch sees it. */
const result = <R>(plan: CommitPlan<R>, epoch: number, written: number): CommitResult => ({
  committed: written,
  skipped: plan.skipped,
  ...(written < plan.write.length ? { duplicates: plan.write.length - written } : {}),
  checkpoint: { ...plan.checkpoint, epoch },
});

/**
 * Marks older than the newest time a commit carries minus this many windows are removed in that
 * commit. A mark matters to records within one window of it; the second window leaves room for
 * a shard that lags the others (a record more than that behind the pipeline's newest may miss
 * its key's mark).
 */
export const DEDUPE_EXPIRY_WINDOWS = 2;

/** The time below which a commit of `rows` removes dedupe marks (see `DEDUPE_EXPIRY_WINDOWS`). */
export function dedupeExpiry(rows: readonly { dedupe?: { at: number } }[], windowMs: number): number {
  let newest = Number.NEGATIVE_INFINITY;
  for (const r of rows) if (r.dedupe && r.dedupe.at > newest) newest = r.dedupe.at;
  return newest - DEDUPE_EXPIRY_WINDOWS * windowMs;
}

/** One pipeline's marks in memory, with the order they were set in, oldest first. */
interface MarkTable {
  marks: Map<string, number>;
  /**
   * Every mark as set, in setting order, as two columns (no object per mark); `head` is the
   * first not yet expired or superseded.
   */
  keys: string[];
  ats: number[];
  head: number;
}

/** Dedupe marks held in memory, per pipeline: the in-memory sinks' storage for `dedupeRows`. */
export class MemoryDedupeMarks {
  private readonly tables = new Map<string, MarkTable>();

  /** `rows` without the duplicates, marking the kept keys and expiring old marks. */
  apply<R extends SequencedRow & { dedupe?: { key: string; at: number } }>(
    pipeline: string,
    rows: readonly R[],
    windowMs: number,
  ): R[] {
    let t = this.tables.get(pipeline);
    if (!t) {
      t = { marks: new Map(), keys: [], ats: [], head: 0 };
      this.tables.set(pipeline, t);
    }
    const { marks, keys, ats } = t;
    const keep = dedupeRows(
      rows,
      windowMs,
      (k) => marks.get(k),
      (k, at) => {
        marks.set(k, at);
        keys.push(k);
        ats.push(at);
      },
      true,
    );
    // Marks are set in roughly rising time: expire from the oldest end only, so a commit costs
    // what it expires, not the size of the table. A mark set again later stays (its newer entry).
    const expiry = dedupeExpiry(rows, windowMs);
    while (t.head < keys.length && ats[t.head]! < expiry) {
      const key = keys[t.head]!;
      if (marks.get(key) === ats[t.head]) marks.delete(key);
      t.head++;
    }
    if (t.head > 4_096 && t.head * 2 > keys.length) {
      keys.splice(0, t.head);
      ats.splice(0, t.head);
      t.head = 0;
    }
    return keep;
  }
}

/** The checkpoint state's count of the shard's duplicates, moved by the commits that drop them. */
export const DUPLICATES_STATE_KEY = "duplicates";

/** `plan` once `written` of its rows were kept: the duplicates dropped are counted with the checkpoint. */
function countDuplicates<R>(plan: CommitPlan<R>, written: number): CommitPlan<R> {
  const dropped = plan.write.length - written;
  if (dropped === 0) return plan;
  const state = plan.checkpoint.state ?? {};
  const before = Number(state[DUPLICATES_STATE_KEY] ?? 0);
  return {
    ...plan,
    checkpoint: { ...plan.checkpoint, state: { ...state, [DUPLICATES_STATE_KEY]: before + dropped } },
    changed: true,
  };
}

/** Whether a commit deduplicates: a window given and a row carrying a business key. */
const dedupes = <R extends SequencedRow>(rows: readonly R[], opts?: CommitOptions): number | null =>
  opts?.dedupeWindowMs !== undefined && rows.some((r) => (r as { dedupe?: unknown }).dedupe !== undefined)
    ? opts.dedupeWindowMs
    : null;

/**
 * The dedupe decision for rows of one batch, for a sink that holds its marks in memory or reads
 * them one by one: `seen(key)` is the key's mark (ms) or undefined. A row is a duplicate when a
 * mark lies within the window of its time, either way (a later-committed record may be older);
 * a kept row's key is marked at the newer of the two times. Rows without a key are kept.
 * `marksSeen`: `seen` answers with what `mark` set in this batch already (marks held in memory),
 * so the batch's own marks need no map of their own.
 */
export function dedupeRows<R extends SequencedRow & { dedupe?: { key: string; at: number } }>(
  rows: readonly R[],
  windowMs: number,
  seen: (key: string) => number | undefined,
  mark: (key: string, at: number) => void,
  marksSeen = false,
): R[] {
  const batch = marksSeen ? null : new Map<string, number>();
  const keep: R[] = [];
  for (const r of rows) {
    const d = r.dedupe;
    if (!d) {
      keep.push(r);
      continue;
    }
    const at = batch === null ? seen(d.key) : (batch.get(d.key) ?? seen(d.key));
    if (at !== undefined && Math.abs(d.at - at) < windowMs) continue;
    const next = at === undefined ? d.at : Math.max(at, d.at);
    batch?.set(d.key, next);
    mark(d.key, next);
    keep.push(r);
  }
  return keep;
}

/** Fences `ref` at `epoch` inside `tx`; returns the checkpoint the new owner starts from. */
export function applyFence<R extends SequencedRow>(
  tx: SinkTransaction<R>,
  ref: ShardRef,
  epoch: number,
  rules?: SinkRules,
): Checkpoint {
  const after = planFence(ref, tx.readCheckpoint(ref), epoch, rules);
  tx.writeCheckpoint(ref, after);
  return { ...after, epoch };
}

/** Commits `rows` and the checkpoint inside `tx` by the rules (see `planCommit`). */
export function applyCommit<R extends SequencedRow>(
  tx: SinkTransaction<R>,
  ref: ShardRef,
  epoch: number,
  worker: string,
  rows: readonly R[],
  lastSeq: number,
  opts?: CommitOptions,
  rules?: SinkRules,
): CommitResult {
  const before = tx.readCheckpoint(ref);
  const plan = planCommit(ref, before, epoch, rows, lastSeq, opts, rules);
  const window = dedupes(plan.write, opts);
  const write = window !== null && tx.dedupe ? tx.dedupe(ref, plan.write, window) : plan.write;
  const done = countDuplicates(plan, write.length);
  if (write.length > 0) tx.writeRows(ref, epoch, worker, write);
  if (done.changed) tx.writeCheckpoint(ref, done.checkpoint);
  const audit = tx.writeBatch && auditRow(before, plan, epoch, worker, lastSeq, write.length, opts);
  if (audit) tx.writeBatch!(ref, audit);
  return result(done, epoch, write.length);
}

/** `applyFence` for an asynchronous transaction. */
export async function applyFenceAsync<R extends SequencedRow>(
  tx: AsyncSinkTransaction<R>,
  ref: ShardRef,
  epoch: number,
  rules?: SinkRules,
): Promise<Checkpoint> {
  const after = planFence(ref, await tx.readCheckpoint(ref), epoch, rules);
  await tx.writeCheckpoint(ref, after);
  return { ...after, epoch };
}

/** `applyCommit` for an asynchronous transaction. */
export async function applyCommitAsync<R extends SequencedRow>(
  tx: AsyncSinkTransaction<R>,
  ref: ShardRef,
  epoch: number,
  worker: string,
  rows: readonly R[],
  lastSeq: number,
  opts?: CommitOptions,
  rules?: SinkRules,
): Promise<CommitResult> {
  const before = await tx.readCheckpoint(ref);
  const plan = planCommit(ref, before, epoch, rows, lastSeq, opts, rules);
  const window = dedupes(plan.write, opts);
  const write = window !== null && tx.dedupe ? await tx.dedupe(ref, plan.write, window) : plan.write;
  const done = countDuplicates(plan, write.length);
  if (write.length > 0) await tx.writeRows(ref, epoch, worker, write);
  if (done.changed) await tx.writeCheckpoint(ref, done.checkpoint);
  const audit = tx.writeBatch && auditRow(before, plan, epoch, worker, lastSeq, write.length, opts);
  if (audit) await tx.writeBatch!(ref, audit);
  return result(done, epoch, write.length);
}
