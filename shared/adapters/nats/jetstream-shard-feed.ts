/**
 * One shard's feed from its epoch's JetStream consumer: records pulled into a buffer by
 * `consume()`, handed to the pipeline in batches, acked once per batch (AckPolicy all). The
 * feed fails (and the lease re-acquires, recreating the consumer) when the consumer is deleted,
 * when its server stops answering after missed heartbeats, or when it stalls with records
 * pending.
 */
import type {
  Consumer,
  ConsumerInfo,
  ConsumerMessages,
  ConsumerNotification,
  JsMsg,
} from "@nats-io/jetstream";
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import type { ShardFeed, SourceMessage } from "../../contract/ports.js";
import { toSourceMessage } from "./jetstream-message.js";

/**
 * A consumer can answer requests and send idle heartbeats yet deliver nothing while records
 * wait (seen on nats-server 2.9.10 after the server holding an R1 consumer was killed and
 * restarted mid-pull): the heartbeat check never trips, and the shard would stall for good.
 * Such a feed is stalled when nothing arrived for `stallMs`, nothing is buffered, the
 * consumer reports records pending, and it is below its ack-pending bound (at the bound the
 * server rightly waits for acks, e.g. while the sink is slow).
 */
export function consumerStalled(s: {
  /** ms since the last delivery (or since the feed started). */
  idleMs: number;
  /** Messages delivered but not yet taken by the pipeline. */
  buffered: number;
  numPending: number;
  ackPending: number;
  maxAckPending: number;
  stallMs: number;
}): boolean {
  return s.idleMs >= s.stallMs && s.buffered === 0 && s.numPending > 0 && s.ackPending < s.maxAckPending;
}

export class JetStreamShardFeed implements ShardFeed {
  private readonly buffer: JsMsg[] = [];
  private messages: ConsumerMessages | undefined;
  private waiter: (() => void) | undefined;
  private checking = false;
  /** How long the consumer may take to answer its info request after missed heartbeats, ms. */
  private readonly aliveCheckMs = 1_500;
  /** Idle time after which the consumer is asked whether records wait undelivered, ms. */
  private readonly stallMs = 5_000;
  private lastDeliveryAt = Date.now();
  private stallTimer: ReturnType<typeof setInterval> | undefined;
  failure: Error | null = null;

  constructor(
    /** The consumer read. */
    readonly name: string,
    /** The stream read, and the server whose replica the consumer reads (when kept on the leader). */
    readonly stream: string,
    readonly server: string | undefined,
    private readonly onClose: (f: JetStreamShardFeed) => void,
    private readonly consumer: Consumer,
    private readonly bufferMessages: number,
    private readonly onStatus?: (s: ConsumerNotification) => void,
  ) {}

  async start(): Promise<void> {
    this.messages = await this.consumer.consume({
      max_messages: this.bufferMessages,
      abort_on_missing_resource: true,
      // 0.5 s idle heartbeats: two missed (~1 s) are how the client notices both a dead server
      // holding this R1 consumer (then `checkAlive` fails the feed and the lease re-acquires
      // elsewhere) and a pull the server refused (a 409), after which it pulls again. Pulls last
      // nats.js's default 30 s: a shard under load refills its pull long before it expires, and
      // an idle shard's pulls end with the server's 408 (which nats-server sends reliably since
      // 2.9.16; on 2.9.10 a pull expiring as a record arrived could end silently and pause the
      // shard for two missed heartbeats, which is why short pulls were ever a question).
      expires: 30_000,
      idle_heartbeat: 500,
      callback: (m) => {
        if (this.failure) return;
        this.lastDeliveryAt = Date.now();
        this.buffer.push(m);
        this.wake();
      },
    });
    const messages = this.messages;
    // Failed (or closed) while the consumer was being set up: `fail` found nothing to stop.
    if (this.failure) {
      await this.stopPulling();
      return;
    }
    this.stallTimer = setInterval(() => void this.checkStalled(), this.stallMs);
    this.stallTimer.unref?.();
    void (async () => {
      for await (const s of messages.status()) {
        // After a close (a drain, a fence) the consumer is deleted on purpose: not news.
        if (!this.failure) this.onStatus?.(s);
        if (
          s.type === "consumer_deleted" ||
          s.type === "consumer_not_found" ||
          s.type === "stream_not_found"
        ) {
          this.fail(new SluiceError(ErrorCode.Unavailable, `consumer gone: ${s.type}`, { retryable: true }));
        } else if (s.type === "heartbeats_missed") {
          void this.checkAlive();
        }
      }
    })().catch(() => {});
    void messages.closed().then((err) => {
      if (err) this.fail(err instanceof Error ? err : new Error(String(err)));
    });
  }

  /**
   * Missed idle heartbeats mean either that the server holding this R1 consumer is gone (then
   * the lease must re-acquire, which creates the consumer afresh) or only that this process or
   * the server was busy for a moment (a CPU spike, an event-loop stall), after which the client
   * pulls again by itself. The consumer's info request tells them apart: no answer within
   * `aliveCheckMs` fails the feed.
   */
  private async checkAlive(): Promise<void> {
    if (this.checking || this.failure) return;
    this.checking = true;
    try {
      await this.infoWithin();
    } catch (err) {
      this.fail(
        new SluiceError(
          ErrorCode.Unavailable,
          `consumer unreachable after missed heartbeats: ${(err as Error).message}`,
          {
            retryable: true,
          },
        ),
      );
    } finally {
      this.checking = false;
    }
  }

  /** The consumer's info, fetched fresh; rejects when it does not answer within `aliveCheckMs`. */
  private async infoWithin(): Promise<ConsumerInfo> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      return await Promise.race([
        this.consumer.info(false),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new Error("no answer")), this.aliveCheckMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** See `consumerStalled`: a stalled consumer fails the feed, and the lease recreates it. */
  private async checkStalled(): Promise<void> {
    const idleMs = Date.now() - this.lastDeliveryAt;
    if (this.checking || this.failure || this.buffer.length > 0 || idleMs < this.stallMs) return;
    this.checking = true;
    try {
      const info = await this.infoWithin();
      const s = {
        idleMs: Date.now() - this.lastDeliveryAt,
        buffered: this.buffer.length,
        numPending: info.num_pending,
        ackPending: info.num_ack_pending,
        maxAckPending: info.config.max_ack_pending ?? Number.POSITIVE_INFINITY,
        stallMs: this.stallMs,
      };
      if (consumerStalled(s))
        this.fail(
          new SluiceError(
            ErrorCode.Unavailable,
            `consumer stalled: ${s.numPending} records pending, none delivered for ${s.idleMs} ms`,
            { retryable: true },
          ),
        );
    } catch {
      // Unanswered: the heartbeat check decides whether the consumer is gone.
    } finally {
      this.checking = false;
    }
  }

  /**
   * Ends the feed: the next `next` throws `err` (the first failure wins). A failed feed never
   * delivers again, so its pulls stop and what it buffered is dropped at once (the server
   * redelivers those records to the shard's next consumer), also when its owner is slow to
   * close it.
   */
  fail(err: Error): void {
    this.failure ??= err;
    clearInterval(this.stallTimer);
    this.buffer.length = 0;
    this.stopPulling();
    this.wake();
  }

  private stopped: Promise<void> | undefined;

  /** Closes the consumer's pull loop, once. */
  private stopPulling(): Promise<void> {
    this.stopped ??= this.messages?.close().then(
      () => undefined,
      () => undefined,
    );
    return this.stopped ?? Promise.resolve();
  }

  wake(): void {
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  async next(max: number, waitMs: number): Promise<SourceMessage[]> {
    if (this.failure) throw this.failure;
    if (this.buffer.length === 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          this.waiter = undefined;
          resolve();
        }, waitMs);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
      if (this.failure) throw this.failure;
    }
    const taken = this.buffer.splice(0, max);
    return taken.map(toSourceMessage);
  }

  ack(last: SourceMessage): void {
    (last.token as JsMsg).ack();
  }

  async close(): Promise<void> {
    this.fail(new SluiceError(ErrorCode.Unavailable, "feed closed"));
    this.onClose(this);
    await this.stopPulling();
  }
}
