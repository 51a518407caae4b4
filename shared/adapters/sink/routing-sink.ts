/**
 * One `Sink` (and one `SinkInspector`) over several: each pipeline's calls go to the sink its
 * config names (`sinkOf`), so a worker can run pipelines that commit to SQLite, PostgreSQL and an
 * output stream side by side.
 */
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import type { ShardRef } from "../../contract/ownership.js";
import type {
  AuditedBatch,
  Checkpoint,
  CommitOptions,
  CommitResult,
  CommittedRow,
  LateRecord,
  MergeRow,
  RowQuery,
  ShardCheckpoint,
  Sink,
  SinkInspector,
  SinkRow,
} from "../../contract/ports.js";

function route<T>(by: ReadonlyMap<string, T>, pipeline: string): T {
  const x = by.get(pipeline);
  if (!x) throw new SluiceError(ErrorCode.InvalidConfig, `no sink for pipeline '${pipeline}'`);
  return x;
}

export class RoutingSink implements Sink {
  /** `byPipeline`: pipeline name -> its sink; the same sink may serve several. */
  constructor(private readonly byPipeline: ReadonlyMap<string, Sink>) {}

  fence(ref: ShardRef, epoch: number): Promise<Checkpoint> {
    return route(this.byPipeline, ref.pipeline).fence(ref, epoch);
  }

  commit(
    ref: ShardRef,
    epoch: number,
    worker: string,
    rows: SinkRow[],
    lastSeq: number,
    opts?: CommitOptions,
  ): Promise<CommitResult> {
    return route(this.byPipeline, ref.pipeline).commit(ref, epoch, worker, rows, lastSeq, opts);
  }

  checkpoint(ref: ShardRef): Promise<Checkpoint> {
    return route(this.byPipeline, ref.pipeline).checkpoint(ref);
  }

  recordIds(ref: ShardRef, fromSeq: number): Promise<string[]> {
    return route(this.byPipeline, ref.pipeline).recordIds(ref, fromSeq);
  }

  async close(): Promise<void> {
    for (const s of new Set(this.byPipeline.values())) await s.close();
  }
}

export class RoutingSinkInspector implements SinkInspector {
  constructor(private readonly byPipeline: ReadonlyMap<string, SinkInspector>) {}

  async checkpoints(): Promise<ShardCheckpoint[]> {
    const out: ShardCheckpoint[] = [];
    for (const i of new Set(this.byPipeline.values())) {
      // Each inspector answers for the pipelines routed to it only.
      for (const c of await i.checkpoints()) if (this.byPipeline.get(c.pipeline) === i) out.push(c);
    }
    return out;
  }

  rowCount(pipeline: string): Promise<number> {
    return route(this.byPipeline, pipeline).rowCount(pipeline);
  }

  rows(pipeline: string, q?: RowQuery): Promise<CommittedRow[]> {
    return route(this.byPipeline, pipeline).rows(pipeline, q);
  }

  async mergeRows(merge: string): Promise<MergeRow[]> {
    // The merge's table is in its branches' sink: the first that holds rows of it answers.
    for (const i of new Set(this.byPipeline.values())) {
      const rows = (await i.mergeRows?.(merge)) ?? [];
      if (rows.length > 0) return rows;
    }
    return [];
  }

  async lateRecords(pipeline: string): Promise<LateRecord[]> {
    return (await route(this.byPipeline, pipeline).lateRecords?.(pipeline)) ?? [];
  }

  async batches(pipeline: string, q?: { shard?: number }): Promise<AuditedBatch[]> {
    return (await route(this.byPipeline, pipeline).batches?.(pipeline, q)) ?? [];
  }

  async close(): Promise<void> {
    for (const i of new Set(this.byPipeline.values())) await i.close();
  }
}
