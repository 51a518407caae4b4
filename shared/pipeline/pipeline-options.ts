/** What a shard's pipeline is given: its ports, its settings, and the hooks it reports through. */
import type {
  BatchReport,
  BatchStartReport,
  HistoryMismatchReport,
  StreamBehindReport,
  StreamTrimmedReport,
} from "../contract/pipeline-reports.js";
import type { Checkpoint, DeadLetterQueue, ShardSource, Sink } from "../contract/ports.js";
import type { CommitterHooks } from "./batch-committer.js";
import type { Stage } from "./stage.js";

export interface PipelinePorts {
  sink: Sink;
  source: ShardSource;
  deadLetters: DeadLetterQueue;
}

export interface PipelineSettings {
  /** Largest batch per sink transaction, records. */
  batchMax: number;
  /** Smallest batch limit the adaptive sizing shrinks to, records (default 16). */
  batchMin?: number;
  /** A commit slower than this halves the batch limit, ms (default 100). */
  targetCommitMs?: number;
  /** How long a shard that is behind waits to fill a batch up to its limit, ms (0: never). */
  lingerMs?: number;
  /** Longest wait for the first message of a batch, ms; bounds how fast a drain starts. */
  pullWaitMs: number;
  /**
   * The worker's in-flight budget, records, and the per-consumer cap, both needed to share
   * the budget (`shardFlow`); without them the source's own bounds apply.
   */
  maxBufferedRecords?: number;
  maxAckPending?: number;
  /**
   * How far around the checkpoint a reconciliation compares record ids, ms of stream time
   * either side (default 120 000, JetStream's default duplicate window: the span in which a
   * producer's retry can store a record at a second position).
   */
  reconcileWindowMs?: number;
  /** See `CommitterHooks.deadLetterMark` (simulator switch; default true). */
  deadLetterMark?: boolean;
}

export interface PipelineHooks extends Omit<CommitterHooks, "stopping"> {
  /** Is the lease confirmed recently enough to commit? Checked before every commit. */
  leaseFresh(): boolean;
  onBatch?(r: BatchReport): void;
  onBatchStart?(r: BatchStartReport): void;
  onHistoryMismatch?(r: HistoryMismatchReport): void;
  /** See `StreamBehindReport`: checked once per acquisition, off its path, when the source can tell. */
  onStreamBehind?(r: StreamBehindReport): void;
  /** See `StreamTrimmedReport`: checked with `onStreamBehind`. */
  onStreamTrimmed?(r: StreamTrimmedReport): void;
  now(): number;
  /** Shards the worker owns or is about to own, this one included; sizes the shard's share. */
  shardsOwned?(): number;
  /**
   * The pipeline's shard count: a record whose `Sluice-Key` maps to another shard is
   * dead-lettered (`KEY_SHARD_MISMATCH`). Without it keys are not checked.
   */
  shards?: number;
  /** The pipeline's stages after decode, in order (none: decode only). */
  stages?: readonly Stage[];
  /**
   * The sink was fenced at this lease's epoch: called once per lease, after its first fence that
   * succeeded (a re-acquisition at the same epoch fences again but changes nothing), with the
   * checkpoint the fence returned. Must not block: it runs on the lease's acquisition path.
   */
  onFenced?(cp: Checkpoint): void;
}
