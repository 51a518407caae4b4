/**
 * One shard lease as a running actor: the pure lease machine (`core/lease.machine.ts`) given
 * its effects — acquire (fence the sink, open this epoch's consumer), run (the pipeline's batch
 * loop), verify (re-read the assignment when the lease went unconfirmed for `leaseTtlMs`) and
 * drain (commit the in-flight batch, then release) — each traced and logged.
 */
import { ROOT_CONTEXT, type Span, SpanKind } from "@opentelemetry/api";
import { type ActorRefFrom, createActor, fromPromise } from "xstate";
import type { Logger } from "../contract/logger.js";
import type { Scheduler } from "../contract/ports.js";
import { leaseMachine, type RunOutcome, type ShardLeaseArgs } from "../core/lease.machine.js";
import type { ShardPipeline } from "../pipeline/shard-pipeline.js";
import { TelemetryAttributes as A, SpanNames } from "../telemetry/attributes.js";
import { getTracer, inSpan, recordFailure, withSpan } from "../telemetry/tracing.js";

export type LeaseActor = ActorRefFrom<typeof leaseMachine>;

export interface ShardLeaseOptions {
  shard: string;
  epoch: number;
  worker: string;
  pipeline: ShardPipeline;
  scheduler: Scheduler;
  log: Logger;
  /** Reads the assignment: is the shard still this worker's at this epoch? */
  stillOwner(): Promise<boolean>;
  /** The worker a drain hands the shard to, when the coordinator named one. */
  nextOwner(): string | null | undefined;
  /** True when the worker drains because it leaves, not because it was revoked. */
  leaving(): boolean;
}

/**
 * Creates (but does not start) the actor of one lease. The hand-off span, open from the start
 * of a drain until the release is reported, is returned by `takeHandoffSpan` once.
 */
export function createShardLease(o: ShardLeaseOptions): {
  actor: LeaseActor;
  takeHandoffSpan(): Span | null;
} {
  const { shard, epoch, pipeline, log } = o;
  const ref = pipeline.ref;
  const spanAttrs = {
    [A.pipeline]: ref.pipeline,
    [A.shard]: ref.shard,
    [A.epoch]: epoch,
    [A.worker]: o.worker,
    [A.nodeId]: o.worker,
  };
  let handoff: Span | null = null;
  let acquireFailures = 0;
  const machine = leaseMachine.provide({
    actors: {
      // Fence the sink, remove older epochs' consumers, open this epoch's consumer.
      acquire: fromPromiseOf(() =>
        withSpan(
          SpanNames.leaseAcquire,
          // Each acquisition is a trace of its own: fence, consumer clean-up, consumer open.
          { kind: SpanKind.INTERNAL, attributes: spanAttrs, parent: ROOT_CONTEXT },
          async (span) => {
            let r: Awaited<ReturnType<ShardPipeline["acquire"]>>;
            try {
              r = await pipeline.acquire();
            } catch (err) {
              // Each failed attempt is visible as it happens (the lease machine backs off,
              // 50 ms doubling to 2 s, so this logs at most a few lines per second per shard).
              acquireFailures++;
              log.warn({ attempt: acquireFailures, err: (err as Error).message }, "lease acquisition failed");
              throw err;
            }
            span.setAttribute(A.checkpoint, r.checkpoint);
            const { fenceMs, openMs } = r;
            const at = {
              checkpoint: r.checkpoint,
              fenceMs: Math.round(fenceMs),
              openMs: Math.round(openMs),
              ...(r.overlapped ? { overlapped: true } : {}),
              ...(r.fencedEarly ? { fencedEarly: true } : {}),
              ...(r.maxAckPending === undefined ? {} : { maxAckPending: r.maxAckPending }),
            };
            // Overlapped, both are timed from the start of the acquisition.
            const took = r.overlapped ? Math.max(fenceMs, openMs) : fenceMs + openMs;
            if (took > 1_000) log.warn(at, "slow lease acquisition");
            else log.info(at, "lease acquired");
            return { checkpoint: r.checkpoint };
          },
        ),
      ),
      run: fromPromiseOf<RunOutcome>(async () => {
        const out = await pipeline.run();
        // A run that failed is re-acquired after a backoff; why it failed explains the pause.
        if (out.type === "failed" && out.reason !== "stopped")
          log.info({ reason: out.reason }, "lease run failed; re-acquiring");
        return out;
      }),
      verify: fromPromiseOf(async () => ((await o.stillOwner()) ? ("owner" as const) : ("lost" as const))),
      drain: fromPromiseOf(async () => {
        const next = o.nextOwner();
        handoff = getTracer().startSpan(
          SpanNames.leaseHandoff,
          {
            kind: SpanKind.INTERNAL,
            attributes: {
              ...spanAttrs,
              // Asked by the coordinator (revoking entry or new owner), or leaving on its own.
              [A.handoffReason]: o.leaving() ? "leaving" : "revoked",
              ...(next ? { [A.next]: next } : {}),
            },
          },
          ROOT_CONTEXT,
        );
        const span = handoff;
        try {
          await inSpan(span, () => pipeline.drain());
        } catch (err) {
          recordFailure(span, err);
          throw err;
        }
      }),
    },
    actions: {
      abandon: () => {
        void pipeline.abandon();
      },
    },
  });
  const actor = createActor(machine, {
    input: { shard, epoch, worker: o.worker, retryBaseMs: 50, retryMaxMs: 2000 },
    clock: o.scheduler,
  });
  return {
    actor,
    takeHandoffSpan: () => {
      const span = handoff;
      handoff = null;
      return span;
    },
  };
}

function fromPromiseOf<T>(fn: () => Promise<T>) {
  return fromPromise<T, ShardLeaseArgs>(() => fn());
}
