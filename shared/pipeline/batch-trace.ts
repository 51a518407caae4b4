/**
 * The spans of one batch: a CONSUMER `process` span (a new trace, linked to the producer span
 * of each record that carries a `traceparent`), with children for the dead-letter publish, the
 * sink commit (made active, so the sink request carries it to the sink process) and the ack
 * that settles the batch.
 *
 * With no tracer provider registered (the default, and always in the simulation) the process
 * span is the API's non-recording span and every method below just runs its function: no
 * header is parsed and no child span is made.
 */
import { type Context, context, ROOT_CONTEXT, type Span, SpanKind, trace } from "@opentelemetry/api";
import type { ShardRef } from "../contract/ownership.js";
import type { SourceMessage } from "../contract/ports.js";
import { consumerName, shardFilter } from "../contract/wire.js";
import {
  TelemetryAttributes as A,
  MESSAGING_SYSTEM,
  MessagingOperation,
  messagingSpanName,
  SpanNames,
} from "../telemetry/attributes.js";
import { producerLinks } from "../telemetry/propagation.js";
import { getTracer, recordFailure } from "../telemetry/tracing.js";

/** Producer links per batch span; the rest are counted in `sluice.links.dropped`. */
export const MAX_BATCH_LINKS = 128;

const shardTemplate = (pipeline: string): string => `sluice.in.${pipeline}.*`;

export class BatchTrace {
  private readonly span: Span;
  private readonly ctx: Context;
  private readonly recording: boolean;

  constructor(ref: ShardRef, epoch: number, worker: string, batch: readonly SourceMessage[]) {
    this.span = getTracer().startSpan(
      messagingSpanName(SpanNames.processPrefix, shardTemplate(ref.pipeline)),
      {
        kind: SpanKind.CONSUMER,
        // Each batch starts its own trace; the records' traces are joined by links.
        root: true,
        attributes: {
          [A.messagingSystem]: MESSAGING_SYSTEM,
          [A.messagingOperationType]: MessagingOperation.process,
          [A.messagingOperationName]: "process",
          [A.messagingDestinationName]: shardFilter(ref.pipeline, ref.shard),
          [A.messagingDestinationTemplate]: shardTemplate(ref.pipeline),
          [A.messagingDestinationPartitionId]: String(ref.shard),
          [A.messagingConsumerGroupName]: consumerName(ref.pipeline, ref.shard, epoch),
          [A.messagingBatchMessageCount]: batch.length,
          [A.pipeline]: ref.pipeline,
          [A.shard]: ref.shard,
          [A.epoch]: epoch,
          [A.worker]: worker,
          [A.nodeId]: worker,
        },
      },
      ROOT_CONTEXT,
    );
    this.recording = this.span.isRecording();
    this.ctx = trace.setSpan(ROOT_CONTEXT, this.span);
    if (this.recording) {
      const { links, dropped } = producerLinks(batch, MAX_BATCH_LINKS);
      if (links.length > 0) this.span.addLinks(links);
      if (dropped > 0) this.span.setAttribute(A.droppedLinks, dropped);
    }
  }

  /** A child span around `fn`, active while it runs. */
  private async child<T>(
    name: string,
    kind: SpanKind,
    fn: () => Promise<T>,
    onDone?: (span: Span, v: T) => void,
  ): Promise<T> {
    if (!this.recording) return fn();
    const span = getTracer().startSpan(name, { kind }, this.ctx);
    try {
      const v = await context.with(trace.setSpan(this.ctx, span), fn);
      onDone?.(span, v);
      return v;
    } catch (err) {
      recordFailure(span, err);
      throw err;
    } finally {
      span.end();
    }
  }

  deadLetter(count: number, fn: () => Promise<void>): Promise<void> {
    if (this.recording) this.span.setAttribute(A.deadLettered, count);
    return this.child(SpanNames.deadLetter, SpanKind.PRODUCER, fn);
  }

  commit<T extends { committed: number; skipped: number; checkpoint: { seq: number } }>(
    fn: () => Promise<T>,
  ): Promise<T> {
    return this.child(SpanNames.sinkCommit, SpanKind.CLIENT, fn, (span, res) => {
      span.setAttributes({
        [A.committed]: res.committed,
        [A.skipped]: res.skipped,
        [A.checkpoint]: res.checkpoint.seq,
      });
    });
  }

  /** The ack of the batch's last record (AckPolicy all settles the whole batch). */
  settle(pipeline: string, fn: () => void): void {
    if (!this.recording) {
      fn();
      return;
    }
    const span = getTracer().startSpan(
      messagingSpanName(SpanNames.settlePrefix, shardTemplate(pipeline)),
      {
        kind: SpanKind.CLIENT,
        attributes: {
          [A.messagingSystem]: MESSAGING_SYSTEM,
          [A.messagingOperationType]: MessagingOperation.settle,
          [A.messagingOperationName]: "ack",
        },
      },
      this.ctx,
    );
    try {
      fn();
    } catch (err) {
      recordFailure(span, err);
      throw err;
    } finally {
      span.end();
    }
  }

  /** Ends the batch span; `outcome` names why the batch did not commit (stale, fenced, failed). */
  end(outcome?: { type: string; reason?: string } | null): void {
    if (this.recording && outcome) {
      this.span.setAttribute(A.batchOutcome, outcome.type);
      if (outcome.type !== "stale") recordFailure(this.span, outcome.reason ?? outcome.type);
    }
    this.span.end();
  }
}
