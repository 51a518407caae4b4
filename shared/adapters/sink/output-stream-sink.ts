/**
 * A sink that hands a pipeline's records on to a stream (`SLUICE_OUT_P`) instead of a database,
 * fenced and exactly-once, whatever the stream's duplicate window:
 *
 * - Each shard has a data subject (`sluice.out.P.<shard>`: one message per record, `Nats-Msg-Id`
 *   its record id) and a checkpoint subject (`sluice.out.P.<shard>.cp`: one message per fence and
 *   per commit, holding the shard's epoch, last committed source sequence and its fingerprint).
 *   The newest checkpoint message *is* the shard's checkpoint.
 * - Every write is conditional on the checkpoint subject not having moved since the writer read
 *   it (`Nats-Expected-Last-Subject-Sequence` on that subject). A fence writes a checkpoint
 *   message; so does every commit, as the last message of one atomic batch with its records. A
 *   zombie's batch therefore fails as a whole once a newer owner has fenced (its expected
 *   sequence is stale), re-reading the checkpoint shows the higher epoch, and it is `FENCED`.
 * - A commit at or below the checkpoint writes nothing (the sink rules skip redeliveries), so a
 *   migration neither loses nor doubles a record, beyond any duplicate window.
 *
 * The rules are `core/sink-rules.ts`, as for every sink; the stream operations are a port
 * (`OutputStreamStore`), written for JetStream (`jetstream-output-store.ts`) and in memory for the
 * simulator, which checks this design under its faults.
 */
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import { type ShardRef, shardKey } from "../../contract/ownership.js";
import type {
  Checkpoint,
  CommitOptions,
  CommitResult,
  OutputCheckpoint,
  OutputRecord,
  OutputStreamStore,
  Sink,
  SinkRow,
} from "../../contract/ports.js";
import { type CommitPlan, planCommit, planFence, type SinkRules } from "../../core/sink-rules.js";

/** Records per atomic batch, the checkpoint message included in the server's limit of 1,000. */
export const OUTPUT_BATCH_RECORDS = 999;

export interface OutputStreamSinkOptions {
  /** The simulator's switches (see `SinkRules`); `expectSequence: false` drops the conditional write. */
  rules?: SinkRules & { expectSequence?: boolean };
  /** Attempts at a conditional write that lost to a concurrent one of the same epoch. */
  maxConflicts?: number;
}

interface Known {
  cp: Checkpoint;
  /** Stream sequence of the checkpoint message the writer last read or wrote (0: none). */
  at: number;
}

export class OutputStreamSink implements Sink {
  /** The last checkpoint this sink read or wrote per shard: a commit needs no read before it. */
  private readonly known = new Map<string, Known>();
  private closed = false;

  constructor(
    private readonly store: OutputStreamStore,
    private readonly opts: OutputStreamSinkOptions = {},
  ) {}

  private assertOpen(): void {
    if (this.closed) throw new SluiceError(ErrorCode.Unavailable, "sink is closed", { retryable: false });
  }

  private async read(ref: ShardRef): Promise<Known> {
    const last = await this.store.lastCheckpoint(ref);
    const k: Known = last ? { cp: last.checkpoint, at: last.streamSeq } : { cp: { epoch: 0, seq: 0 }, at: 0 };
    this.known.set(shardKey(ref), k);
    return k;
  }

  private expectAt(at: number): number | undefined {
    return this.opts.rules?.expectSequence === false ? undefined : at;
  }

  async fence(ref: ShardRef, epoch: number): Promise<Checkpoint> {
    this.assertOpen();
    for (let attempt = 0; ; attempt++) {
      const k = await this.read(ref);
      const after = planFence(ref, k.cp, epoch, this.opts.rules);
      const cp: OutputCheckpoint = { ...after, worker: "" };
      const r = await this.store.append(ref, [], cp, this.expectAt(k.at));
      if (r.ok) {
        this.known.set(shardKey(ref), { cp: after, at: r.checkpointSeq });
        return { ...after, epoch };
      }
      // Another writer moved the checkpoint between the read and the write: decide again.
      if (attempt + 1 >= (this.opts.maxConflicts ?? 5)) throw conflict(ref, epoch);
    }
  }

  async commit(
    ref: ShardRef,
    epoch: number,
    worker: string,
    rows: SinkRow[],
    lastSeq: number,
    opts: CommitOptions = {},
  ): Promise<CommitResult> {
    this.assertOpen();
    let k = this.known.get(shardKey(ref)) ?? (await this.read(ref));
    for (let attempt = 0; ; attempt++) {
      const plan = planCommit(ref, k.cp, epoch, rows, lastSeq, opts, this.opts.rules);
      const written = await this.write(ref, worker, plan, k.at);
      if (written !== null) {
        this.known.set(shardKey(ref), { cp: plan.checkpoint, at: written });
        return {
          committed: plan.write.length,
          skipped: plan.skipped,
          checkpoint: { ...plan.checkpoint, epoch },
        };
      }
      // The checkpoint moved under this writer: re-read it; the rules refuse a lower epoch.
      k = await this.read(ref);
      if (attempt + 1 >= (this.opts.maxConflicts ?? 5)) throw conflict(ref, epoch);
    }
  }

  /**
   * Writes a commit's records and its checkpoint, in atomic batches of `OUTPUT_BATCH_RECORDS`;
   * each batch but the last ends with a checkpoint at its own last record, so a crash between
   * batches leaves a checkpoint that covers exactly what was written. Returns the stream sequence
   * of the last checkpoint message, or null when the checkpoint subject had moved.
   */
  private async write(
    ref: ShardRef,
    worker: string,
    plan: CommitPlan<SinkRow>,
    at: number,
  ): Promise<number | null> {
    if (plan.write.length === 0 && !plan.changed) return at;
    const rows = plan.write;
    let expect = at;
    for (let i = 0; i < Math.max(1, rows.length); i += OUTPUT_BATCH_RECORDS) {
      const chunk = rows.slice(i, i + OUTPUT_BATCH_RECORDS);
      const final = i + OUTPUT_BATCH_RECORDS >= rows.length;
      const lastRow = chunk[chunk.length - 1];
      const cp: OutputCheckpoint = final
        ? { ...plan.checkpoint, worker }
        : {
            epoch: plan.checkpoint.epoch,
            seq: lastRow!.sourceSeq,
            fingerprint: lastRow!.recordId,
            // The committer changes the state only in commits without rows (`BatchCommitter.pin`).
            ...(plan.checkpoint.state === undefined ? {} : { state: plan.checkpoint.state }),
            worker,
          };
      const records: OutputRecord[] = chunk.map((r) => ({ row: r, epoch: plan.checkpoint.epoch, worker }));
      const res = await this.store.append(ref, records, cp, this.expectAt(expect));
      if (!res.ok) return null;
      expect = res.checkpointSeq;
    }
    return expect;
  }

  async checkpoint(ref: ShardRef): Promise<Checkpoint> {
    this.assertOpen();
    return (await this.read(ref)).cp;
  }

  recordIds(ref: ShardRef, fromSeq: number): Promise<string[]> {
    this.assertOpen();
    return this.store.recordIds(ref, fromSeq);
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

const conflict = (ref: ShardRef, epoch: number): SluiceError =>
  new SluiceError(
    ErrorCode.Unavailable,
    `shard ${ref.shard}: the checkpoint of epoch ${epoch} kept moving under concurrent writes`,
    { retryable: true },
  );
