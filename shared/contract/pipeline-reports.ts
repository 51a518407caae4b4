/**
 * What a shard's pipeline reports as it runs: the worker turns these into logs and metrics.
 * Plain data, so telemetry can take them without knowing the pipeline.
 */
import type { ShardRef } from "./ownership.js";

/**
 * The stream no longer holds the checkpoint's record at the checkpoint's sequence: the
 * stream's history changed under the sink (a JetStream replica that diverged after a fault
 * numbers records differently). The pipeline then reconciles by record id.
 */
export interface HistoryMismatchReport {
  ref: ShardRef;
  epoch: number;
  checkpointSeq: number;
  expected: string;
  /** The first message the stream holds at or after `checkpointSeq`, and its fingerprint. */
  foundSeq: number;
  found: string;
  /** Stream time the consumer was rewound to, ms since the epoch (absent: to the beginning). */
  rewindToMs?: number;
}

/**
 * A lease's checkpoint lies past the last record its stream ever stored: the sink was written
 * from another stream (this one deleted and made again, or another cluster's). The consumer
 * waits at the checkpoint, so what the stream stores below it is not read.
 */
export interface StreamBehindReport {
  ref: ShardRef;
  epoch: number;
  checkpointSeq: number;
  streamLastSeq: number;
}

/**
 * A lease's checkpoint lies before the first record its stream still holds: the stream's limits
 * (`max_age`, `max_msgs`, `max_bytes`) or a purge removed records the shard had not committed
 * (sequences `checkpointSeq + 1` to `streamFirstSeq - 1`, of every shard of a shared stream), or
 * only the checkpoint's own record when `removedAfterCheckpoint` is 0. Those of the shard's
 * records are lost; the first delivery will not be the checkpoint's record either, so a history
 * mismatch follows, which reconciles harmlessly.
 */
export interface StreamTrimmedReport {
  ref: ShardRef;
  epoch: number;
  checkpointSeq: number;
  streamFirstSeq: number;
  /** Sequences after the checkpoint the stream no longer holds. */
  removedAfterCheckpoint: number;
}

/** A batch committed and acked. */
export interface BatchReport {
  ref: ShardRef;
  epoch: number;
  committed: number;
  skipped: number;
  /** Records the sink dropped as duplicates of a business key committed within the window. */
  duplicates: number;
  deadLettered: number;
  /** Records a stage routed to a side output (committed with the batch, counted apart). */
  routed: number;
  checkpoint: number;
  /** Time spent in the sink transaction, ms. */
  commitMs: number;
  /** Messages still undelivered to the consumer after the batch's last one, when the source says. */
  pending?: number;
}

/** A batch about to be committed (reported once per pulled batch, before its commit). */
export interface BatchStartReport {
  ref: ShardRef;
  epoch: number;
  records: number;
  /** Messages still undelivered to the consumer after the batch's last one, when the source says. */
  pending?: number;
}
