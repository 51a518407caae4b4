/**
 * The lifecycle of one shard lease on a worker, as an xstate v5 machine.
 *
 *   acquiring --ok--> active --REVOKE--> draining --> released (final)
 *       |  \            |  ^
 *       |   fenced      | stale: the pipeline saw its lease unconfirmed for longer than
 *       v               v  |        the lease TTL (a pause, or no leader); re-check first
 *    backoff <--fail-- verifying --lost--> fenced (final)
 *
 * The machine decides; it performs no IO. The actors `acquire`, `run`, `verify`, `drain` and
 * the action `abandon` are placeholders here and are provided by the worker runtime through
 * `leaseMachine.provide(...)`, backed by ports with in-memory and NATS/SQLite implementations.
 * Delays run on the actor system's clock, so tests inject `SimulatedClock`.
 */
import { assign, fromPromise, setup } from "xstate";
import { ErrorCode, isSluiceError } from "../contract/errors.js";

export interface LeaseInput {
  shard: string;
  epoch: number;
  worker: string;
  /** First retry delay after a failed acquire or run, ms; doubles up to `retryMaxMs`. */
  retryBaseMs: number;
  retryMaxMs: number;
}

export interface LeaseContext extends LeaseInput {
  attempts: number;
  /** Last sequence committed for this shard when the lease was acquired. */
  checkpoint: number;
  lastError: string | null;
  result: "released" | "fenced" | null;
  /** The sink's fenced epoch when it rejected this lease (higher than `epoch`). */
  fencedBy: number | null;
}

export interface ShardLeaseArgs {
  shard: string;
  epoch: number;
}

/** Why the pipeline's run ended on its own. */
export type RunOutcome =
  | { type: "stale" }
  | { type: "fenced"; reason: string; fencedBy?: number }
  | { type: "failed"; reason: string };

export type VerifyOutcome = "owner" | "lost";

export type LeaseEvent =
  /** Graceful hand-off: stop pulling, commit the in-flight batch, ack, release. */
  | { type: "REVOKE" }
  /** Another owner holds a higher epoch: stop at once, commit nothing more. */
  | { type: "FENCE"; reason: string };

export const fencedMarker = "FENCED";

export const leaseMachine = setup({
  types: {
    input: {} as LeaseInput,
    context: {} as LeaseContext,
    events: {} as LeaseEvent,
    output: {} as { result: "released" | "fenced"; reason: string | null; fencedBy: number | null },
  },
  actors: {
    /** Fence the sink at the epoch, read the checkpoint, open this epoch's consumer. */
    acquire: fromPromise<{ checkpoint: number }, ShardLeaseArgs>(async () => {
      throw new Error("lease actor 'acquire' was not provided");
    }),
    /** Consume, commit and ack batches until told to stop or until something ends it. */
    run: fromPromise<RunOutcome, ShardLeaseArgs>(async () => {
      throw new Error("lease actor 'run' was not provided");
    }),
    /** Re-read the assignment: is this worker still the owner at this epoch? */
    verify: fromPromise<VerifyOutcome, ShardLeaseArgs>(async () => {
      throw new Error("lease actor 'verify' was not provided");
    }),
    /** Stop pulling, commit and ack the in-flight batch, close the consumer, report released. */
    drain: fromPromise<void, ShardLeaseArgs>(async () => {
      throw new Error("lease actor 'drain' was not provided");
    }),
  },
  actions: {
    /** Drop everything without committing: a fenced owner's work is void. */
    abandon: () => {},
  },
  guards: {
    isFencedError: ({ event }) => {
      const err = (event as { error?: unknown }).error;
      return isSluiceError(err, ErrorCode.Fenced) || String(err ?? "").includes(fencedMarker);
    },
  },
  delays: {
    retryDelay: ({ context }) =>
      Math.min(context.retryMaxMs, context.retryBaseMs * 2 ** Math.max(0, context.attempts - 1)),
  },
}).createMachine({
  id: "lease",
  context: ({ input }) => ({
    ...input,
    attempts: 0,
    checkpoint: 0,
    lastError: null,
    result: null,
    fencedBy: null,
  }),
  initial: "acquiring",
  on: {
    FENCE: { target: ".fenced", actions: assign({ lastError: ({ event }) => event.reason }) },
  },
  states: {
    acquiring: {
      invoke: {
        src: "acquire",
        input: ({ context }) => ({ shard: context.shard, epoch: context.epoch }),
        onDone: {
          target: "active",
          actions: assign({ checkpoint: ({ event }) => event.output.checkpoint, attempts: 0 }),
        },
        onError: [
          {
            guard: "isFencedError",
            target: "fenced",
            actions: assign({
              lastError: ({ event }) => String(event.error),
              fencedBy: ({ event }) => (isSluiceError(event.error) ? (event.error.fencedBy ?? null) : null),
            }),
          },
          {
            target: "backoff",
            actions: assign({
              attempts: ({ context }) => context.attempts + 1,
              lastError: ({ event }) => String(event.error),
            }),
          },
        ],
      },
      on: { REVOKE: "draining" },
    },
    backoff: {
      after: { retryDelay: "acquiring" },
      on: { REVOKE: "draining" },
    },
    active: {
      invoke: {
        src: "run",
        input: ({ context }) => ({ shard: context.shard, epoch: context.epoch }),
        onDone: [
          { guard: ({ event }) => event.output.type === "stale", target: "verifying" },
          {
            guard: ({ event }) => event.output.type === "fenced",
            target: "fenced",
            actions: assign({
              fencedBy: ({ event }) =>
                event.output.type === "fenced" ? (event.output.fencedBy ?? null) : null,
              lastError: ({ event }) => ("reason" in event.output ? event.output.reason : null),
            }),
          },
          {
            target: "backoff",
            actions: assign({
              attempts: ({ context }) => context.attempts + 1,
              lastError: ({ event }) => ("reason" in event.output ? event.output.reason : null),
            }),
          },
        ],
        onError: {
          target: "backoff",
          actions: assign({
            attempts: ({ context }) => context.attempts + 1,
            lastError: ({ event }) => String(event.error),
          }),
        },
      },
      on: { REVOKE: "draining" },
    },
    verifying: {
      invoke: {
        src: "verify",
        input: ({ context }) => ({ shard: context.shard, epoch: context.epoch }),
        onDone: [
          { guard: ({ event }) => event.output === "owner", target: "active" },
          { target: "fenced", actions: assign({ lastError: "lease lost while paused" }) },
        ],
        onError: {
          target: "verifyBackoff",
          actions: assign({ lastError: ({ event }) => String(event.error) }),
        },
      },
      on: { REVOKE: "draining" },
    },
    verifyBackoff: {
      after: { retryDelay: "verifying" },
      on: { REVOKE: "draining" },
    },
    draining: {
      invoke: {
        src: "drain",
        input: ({ context }) => ({ shard: context.shard, epoch: context.epoch }),
        onDone: "released",
        // A drain that could not commit its last batch does not release: "released" promises
        // that nothing more will land, so the coordinator must force the hand-off instead.
        onError: { target: "fenced", actions: assign({ lastError: ({ event }) => String(event.error) }) },
      },
    },
    released: {
      type: "final",
      entry: assign({ result: "released" as const }),
    },
    fenced: {
      type: "final",
      entry: [assign({ result: "fenced" as const }), "abandon"],
    },
  },
  output: ({ context }) => ({
    result: context.result ?? "released",
    reason: context.lastError,
    fencedBy: context.fencedBy,
  }),
});

export type LeaseMachine = typeof leaseMachine;
