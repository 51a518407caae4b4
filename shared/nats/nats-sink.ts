/**
 * The sink over NATS request/reply. One sink process owns the SQLite file and serves fence,
 * commit and checkpoint requests; workers hold no database lock, so a paused or killed
 * worker can never stall the other writers. Requests are CBOR; errors come back typed.
 *
 * A commit whose reply is lost is simply retried: the sink skips sequences already
 * committed, so a retry never writes a row twice.
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { decode, encode } from "cbor-x";
import type { ShardRef } from "../core/types.js";
import { ErrorCode, SluiceError } from "../errors.js";
import type { Checkpoint, CommitResult, Sink, SinkRow } from "../ports.js";

export const SinkSubjects = {
  fence: "sluice.sink.fence",
  commit: "sluice.sink.commit",
  checkpoint: "sluice.sink.checkpoint",
} as const;

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
}

export class NatsSinkClient implements Sink {
  constructor(
    private readonly nc: NatsConnection,
    /** Per-request timeout, ms. */
    private readonly timeoutMs = 10_000,
  ) {}

  private async call<T>(subject: string, body: unknown): Promise<T> {
    let data: Uint8Array;
    try {
      const m = await this.nc.request(subject, encode(body), { timeout: this.timeoutMs });
      data = m.data;
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

  fence(ref: ShardRef, epoch: number): Promise<Checkpoint> {
    return this.call(SinkSubjects.fence, { ref, epoch } satisfies FenceRequest);
  }

  commit(
    ref: ShardRef,
    epoch: number,
    worker: string,
    rows: SinkRow[],
    lastSeq: number,
  ): Promise<CommitResult> {
    return this.call(SinkSubjects.commit, { ref, epoch, worker, rows, lastSeq } satisfies CommitRequest);
  }

  checkpoint(ref: ShardRef): Promise<Checkpoint> {
    return this.call(SinkSubjects.checkpoint, { ref });
  }

  async close(): Promise<void> {}
}

/** Serves a `Sink` (the SQLite one) to the cluster. */
export class NatsSinkServer {
  private readonly subs: Subscription[] = [];

  constructor(
    private readonly nc: NatsConnection,
    private readonly sink: Sink,
    private readonly onError: (err: unknown) => void = () => {},
  ) {}

  start(): void {
    this.serve<FenceRequest, Checkpoint>(SinkSubjects.fence, (r) => this.sink.fence(r.ref, r.epoch));
    this.serve<CommitRequest, CommitResult>(SinkSubjects.commit, (r) =>
      this.sink.commit(r.ref, r.epoch, r.worker, r.rows, r.lastSeq),
    );
    this.serve<{ ref: ShardRef }, Checkpoint>(SinkSubjects.checkpoint, (r) => this.sink.checkpoint(r.ref));
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
              reply = { ok: true, value: await handle(decode(m.data) as Req) };
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

  async stop(): Promise<void> {
    for (const s of this.subs) s.unsubscribe();
    this.subs.length = 0;
  }
}
