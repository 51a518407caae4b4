/**
 * The producer library: pipelined JetStream publishing with a bounded window of outstanding
 * PubAcks. Retries keep the record's `Nats-Msg-Id`, so the stream's duplicate window turns a
 * retry of a publish that did land into a no-op. A full window blocks `send` (backpressure).
 */
import { type JetStreamClient, jetstream, type PubAck } from "@nats-io/jetstream";
import { type NatsConnection, headers as natsHeaders } from "@nats-io/transport-node";
import pRetry from "p-retry";
import { Headers, ingestSubject } from "./wire.js";

export interface ProducerOptions {
  /** Max publishes awaiting their PubAck. */
  window: number;
  /** Attempts per record after the first. */
  retries: number;
  /** PubAck timeout per attempt, ms. */
  timeoutMs: number;
}

export type PublishStatus = "acked" | "failed" | "timeout";

export interface PublishResult {
  id: string;
  status: PublishStatus;
  /** Stream sequence when acked. */
  seq?: number;
  duplicate?: boolean;
  error?: string;
}

export interface OutgoingRecord {
  id: string;
  key: string;
  data: Uint8Array;
  contentType?: string;
}

export class Producer {
  private readonly js: JetStreamClient;
  private inFlight = 0;
  private readonly waiters: Array<() => void> = [];
  private readonly all = new Set<Promise<void>>();

  constructor(
    nc: NatsConnection,
    private readonly pipeline: string,
    private readonly opts: ProducerOptions = { window: 1024, retries: 5, timeoutMs: 5_000 },
  ) {
    this.js = jetstream(nc, { timeout: opts.timeoutMs });
  }

  /** Resolves once the record is in the window; `onResult` is called when it is confirmed. */
  async send(r: OutgoingRecord, onResult: (res: PublishResult) => void): Promise<void> {
    while (this.inFlight >= this.opts.window) {
      await new Promise<void>((res) => this.waiters.push(res));
    }
    this.inFlight++;
    const p = this.publish(r)
      .then(onResult)
      .finally(() => {
        this.inFlight--;
        this.all.delete(p);
        this.waiters.shift()?.();
      });
    this.all.add(p);
  }

  private async publish(r: OutgoingRecord): Promise<PublishResult> {
    const h = natsHeaders();
    if (r.contentType) h.set(Headers.contentType, r.contentType);
    let timedOut = false;
    try {
      const ack: PubAck = await pRetry(
        () =>
          this.js.publish(ingestSubject(this.pipeline, r.key), r.data, {
            msgID: r.id,
            headers: h,
            timeout: this.opts.timeoutMs,
          }),
        {
          retries: this.opts.retries,
          minTimeout: 100,
          maxTimeout: 2_000,
          onFailedAttempt: ({ error }) => {
            if (/timeout|TIMEOUT/i.test(String(error.message))) timedOut = true;
          },
        },
      );
      return { id: r.id, status: "acked", seq: ack.seq, duplicate: ack.duplicate };
    } catch (err) {
      // A publish that ever timed out may have landed: it is indeterminate, not failed.
      return { id: r.id, status: timedOut ? "timeout" : "failed", error: String((err as Error).message) };
    }
  }

  /** Waits for every outstanding publish. */
  async flush(): Promise<void> {
    while (this.all.size > 0) await Promise.allSettled([...this.all]);
  }
}
