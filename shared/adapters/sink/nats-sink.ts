/**
 * The sink over NATS request/reply. One sink process owns the SQLite file and serves fence,
 * commit and checkpoint requests; workers hold no database lock, so a paused or killed
 * worker can never stall the other writers. Requests are CBOR, rows carry their decoded
 * values (the sink process renders them, never decodes the records' bytes); errors come back
 * typed.
 *
 * A commit whose reply is lost is simply retried: the sink skips sequences already
 * committed, so a retry never writes a row twice.
 */
import {
  type MsgHdrs,
  type NatsConnection,
  headers as natsHeaders,
  type Subscription,
} from "@nats-io/transport-node";
import { SpanKind, trace } from "@opentelemetry/api";
import { decode, encode } from "cbor-x";
import pRetry from "p-retry";
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
import { SinkSubjects } from "../../contract/wire.js";
import { TelemetryAttributes as A, SpanNames } from "../../telemetry/attributes.js";
import { extractFromNatsHeaders, injectActiveIntoNatsHeaders } from "../../telemetry/propagation.js";
import { withSpan } from "../../telemetry/tracing.js";

type Reply<T> =
  | { ok: true; value: T }
  | { ok: false; code: ErrorCode; message: string; retryable: boolean; fencedBy?: number };

interface FenceRequest {
  ref: ShardRef;
  epoch: number;
}
interface CommitRequest {
  ref: ShardRef;
  epoch: number;
  worker: string;
  rows: SinkRow[];
  lastSeq: number;
  opts?: CommitOptions;
}
interface RecordIdsRequest {
  ref: ShardRef;
  fromSeq: number;
}
interface RowsRequest {
  pipeline: string;
  q?: RowQuery;
}

/** How long one request waits for the sink process, and how long a call keeps re-sending it. */
export interface SinkRequestTimeouts {
  /** One attempt, ms. */
  attemptMs: number;
  /** Every attempt together, ms. */
  totalMs: number;
}

/**
 * A commit or fence takes milliseconds; an attempt that has not been answered in 2 s was most
 * likely lost with the NATS server the sink process was connected to (killed, paused, cut
 * off), and the sink answers again once it has reconnected elsewhere: the request is sent
 * again rather than waited out. Sending it twice is safe: a commit the sink already applied is
 * a redelivery to the sink rules, and a fence at the same epoch is idempotent.
 */
export const defaultSinkTimeouts: SinkRequestTimeouts = { attemptMs: 2_000, totalMs: 30_000 };

/** The request could not reach the sink process or went unanswered (not an error it replied). */
class SinkUnreachable extends Error {}

/** Sends one request to the sink process, again while unanswered, and unwraps its typed reply. */
async function call<T>(
  nc: NatsConnection,
  subject: string,
  body: unknown,
  t: SinkRequestTimeouts,
): Promise<T> {
  const payload = encode(body);
  let data: Uint8Array;
  try {
    data = await pRetry(
      async () => {
        try {
          // A traced caller (a batch's commit span, a lease acquisition) carries its context to
          // the sink process; an untraced one sends no headers at all.
          const h = traceHeaders();
          return (await nc.request(subject, payload, { timeout: t.attemptMs, ...(h ? { headers: h } : {}) }))
            .data;
        } catch (err) {
          throw new SinkUnreachable((err as Error).message, { cause: err });
        }
      },
      {
        retries: Number.POSITIVE_INFINITY,
        minTimeout: 50,
        maxTimeout: 500,
        factor: 2,
        maxRetryTime: t.totalMs,
        shouldRetry: ({ error }) => error instanceof SinkUnreachable,
      },
    );
  } catch (err) {
    throw new SluiceError(
      ErrorCode.Unavailable,
      `sink did not answer ${subject}: ${(err as Error).message}`,
      {
        retryable: true,
        cause: err,
      },
    );
  }
  const r = decode(data) as Reply<T>;
  if (r.ok) return r.value;
  throw new SluiceError(r.code, r.message, {
    retryable: r.retryable,
    ...(r.fencedBy === undefined ? {} : { fencedBy: r.fencedBy }),
  });
}

export class NatsSinkClient implements Sink {
  constructor(
    private readonly nc: NatsConnection,
    private readonly timeouts: SinkRequestTimeouts = defaultSinkTimeouts,
  ) {}

  private call<T>(subject: string, body: unknown): Promise<T> {
    return call(this.nc, subject, body, this.timeouts);
  }

  fence(ref: ShardRef, epoch: number): Promise<Checkpoint> {
    return this.call(SinkSubjects.fence, { ref, epoch } satisfies FenceRequest);
  }

  commit(
    ref: ShardRef,
    epoch: number,
    worker: string,
    rows: SinkRow[],
    lastSeq: number,
    opts?: CommitOptions,
  ): Promise<CommitResult> {
    return this.call(SinkSubjects.commit, {
      ref,
      epoch,
      worker,
      rows: rows.map(wireRow),
      lastSeq,
      ...(opts ? { opts } : {}),
    } satisfies CommitRequest);
  }

  checkpoint(ref: ShardRef): Promise<Checkpoint> {
    return this.call(SinkSubjects.checkpoint, { ref });
  }

  recordIds(ref: ShardRef, fromSeq: number): Promise<string[]> {
    return this.call(SinkSubjects.recordIds, { ref, fromSeq } satisfies RecordIdsRequest);
  }

  async close(): Promise<void> {}
}

/** The sink process's inspector, over NATS (tools and dashboards that do not open its file). */
export class NatsSinkInspector implements SinkInspector {
  private readonly timeouts: SinkRequestTimeouts;

  constructor(
    private readonly nc: NatsConnection,
    /** Per-request timeout, ms (a status view rather shows "unknown" than waits). */
    timeoutMs = 10_000,
  ) {
    this.timeouts = { attemptMs: timeoutMs, totalMs: timeoutMs };
  }

  checkpoints(): Promise<ShardCheckpoint[]> {
    return call(this.nc, SinkSubjects.checkpoints, {}, this.timeouts);
  }

  rowCount(pipeline: string): Promise<number> {
    return call(this.nc, SinkSubjects.rowCount, { pipeline }, this.timeouts);
  }

  rows(pipeline: string, q?: RowQuery): Promise<CommittedRow[]> {
    return call(
      this.nc,
      SinkSubjects.rows,
      { pipeline, ...(q ? { q } : {}) } satisfies RowsRequest,
      this.timeouts,
    );
  }

  mergeRows(merge: string): Promise<MergeRow[]> {
    return call(this.nc, SinkSubjects.mergeRows, { merge }, this.timeouts);
  }

  lateRecords(pipeline: string): Promise<LateRecord[]> {
    return call(this.nc, SinkSubjects.lateRecords, { pipeline }, this.timeouts);
  }

  batches(pipeline: string, q?: { shard?: number }): Promise<AuditedBatch[]> {
    return call(this.nc, SinkSubjects.batches, { pipeline, ...(q ? { q } : {}) }, this.timeouts);
  }

  async close(): Promise<void> {}
}

/**
 * A row as it crosses the wire: exactly the `SinkRow` fields. A row handed over by the pipeline
 * is the record object itself, which also holds its source message.
 */
function wireRow(r: SinkRow): SinkRow {
  const w: SinkRow = { recordId: r.recordId, key: r.key, sourceSeq: r.sourceSeq, value: r.value };
  if (r.output !== undefined) w.output = r.output;
  if (r.lineage !== undefined) w.lineage = r.lineage;
  if (r.dedupe !== undefined) w.dedupe = r.dedupe;
  if (r.late !== undefined) w.late = r.late;
  if (r.merge !== undefined) w.merge = r.merge;
  return w;
}

/** NATS headers carrying the active span's context, or undefined when it is not recording. */
function traceHeaders(): MsgHdrs | undefined {
  if (!trace.getActiveSpan()?.isRecording()) return undefined;
  const h = natsHeaders();
  return injectActiveIntoNatsHeaders(h) ? h : undefined;
}

/** Serves a `Sink` (the SQLite one) and its inspector to the cluster. */
export class NatsSinkServer {
  private readonly subs: Subscription[] = [];

  constructor(
    private readonly nc: NatsConnection,
    private readonly sink: Sink,
    private readonly inspector: SinkInspector | null,
    private readonly onError: (err: unknown) => void = () => {},
  ) {}

  start(): void {
    this.serve<FenceRequest, Checkpoint>(SinkSubjects.fence, (r) => this.sink.fence(r.ref, r.epoch));
    this.serve<CommitRequest, CommitResult>(SinkSubjects.commit, (r) =>
      this.sink.commit(r.ref, r.epoch, r.worker, r.rows, r.lastSeq, r.opts),
    );
    this.serve<{ ref: ShardRef }, Checkpoint>(SinkSubjects.checkpoint, (r) => this.sink.checkpoint(r.ref));
    this.serve<RecordIdsRequest, string[]>(SinkSubjects.recordIds, (r) =>
      this.sink.recordIds(r.ref, r.fromSeq),
    );
    const inspector = this.inspector;
    if (!inspector) return;
    this.serve<unknown, ShardCheckpoint[]>(SinkSubjects.checkpoints, () => inspector.checkpoints());
    this.serve<{ pipeline: string }, number>(SinkSubjects.rowCount, (r) => inspector.rowCount(r.pipeline));
    this.serve<RowsRequest, CommittedRow[]>(SinkSubjects.rows, (r) => inspector.rows(r.pipeline, r.q));
    this.serve<{ pipeline: string; q?: { shard?: number } }, AuditedBatch[]>(
      SinkSubjects.batches,
      async (r) => (await inspector.batches?.(r.pipeline, r.q)) ?? [],
    );
    this.serve<{ merge: string }, MergeRow[]>(
      SinkSubjects.mergeRows,
      async (r) => (await inspector.mergeRows?.(r.merge)) ?? [],
    );
    this.serve<{ pipeline: string }, LateRecord[]>(
      SinkSubjects.lateRecords,
      async (r) => (await inspector.lateRecords?.(r.pipeline)) ?? [],
    );
  }

  private serve<Req, Res>(subject: string, handle: (req: Req) => Promise<Res>): void {
    this.subs.push(
      this.nc.subscribe(subject, {
        queue: "sluice-sink",
        callback: (err, m) => {
          if (err) return;
          void (async () => {
            let reply: Reply<Res>;
            try {
              const req = decode(m.data) as Req;
              reply = { ok: true, value: await this.traced(subject, m.headers, req, handle) };
            } catch (e) {
              const se = e instanceof SluiceError ? e : null;
              if (!se) this.onError(e);
              reply = {
                ok: false,
                code: se?.code ?? ErrorCode.Unavailable,
                message: (e as Error).message,
                retryable: se?.retryable ?? true,
                ...(se?.fencedBy === undefined ? {} : { fencedBy: se.fencedBy }),
              };
            }
            m.respond(encode(reply));
          })();
        },
      }),
    );
  }

  /** Serves the request in a SERVER span, the child of the caller's span when it sent one. */
  private traced<Req, Res>(
    subject: string,
    headers: MsgHdrs | undefined,
    req: Req,
    handle: (req: Req) => Promise<Res>,
  ): Promise<Res> {
    const parent = extractFromNatsHeaders(headers);
    // Only continue a caller's trace: an untraced request (a status probe, an unsampled
    // commit) would otherwise start a root trace per request.
    if (!trace.getSpanContext(parent)) return handle(req);
    const op = subject.slice(subject.lastIndexOf(".") + 1);
    const r = (req as { ref?: ShardRef; epoch?: number }) ?? {};
    return withSpan(
      `${SpanNames.sinkServePrefix} ${op}`,
      {
        kind: SpanKind.SERVER,
        parent,
        attributes: {
          [A.sinkOperation]: op,
          ...(r.ref ? { [A.pipeline]: r.ref.pipeline, [A.shard]: r.ref.shard } : {}),
          ...(typeof r.epoch === "number" ? { [A.epoch]: r.epoch } : {}),
        },
      },
      () => handle(req),
    );
  }

  async stop(): Promise<void> {
    for (const s of this.subs) s.unsubscribe();
    this.subs.length = 0;
  }
}
