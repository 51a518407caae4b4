/**
 * Heartbeats that outlast a stalled event loop.
 *
 * A worker's heartbeats come from its event loop, and so does its batch work. Under full load
 * the commit replies of many shards arrive in one socket read, and each shard's next batch is
 * then decoded and sent in the same run of microtasks, before any timer. On the 2-core
 * benchmark machine, with the producer and three NATS servers taking most of the CPU, such a
 * run of a worker owning 64 shards lasted 0.6–1.4 s, and the coordinator, hearing nothing for
 * its 1 s failure timeout, moved every shard of a busy, healthy worker: in 3 of 5 thirty-second
 * memory runs.
 *
 * A worker thread with a NATS connection of its own is handed every heartbeat the loop sends.
 * When the loop misses a beat it re-sends the last one, every `heartbeatMs`, for at most
 * `stallLimitMs` (`keepAliveAction`); a loop silent longer is treated as dead. Kafka's
 * consumer heartbeat thread and `max.poll.interval.ms` play the same two roles.
 *
 * Keep-alives keep the membership only. They carry no reply subject, so no grant answers them
 * and they confirm no lease: leases are confirmed by grants of heartbeats the loop sent itself
 * (`WorkerRuntime`), and the lease argument is unchanged. Heartbeats are sent as before; the
 * thread adds to them.
 */
import { Worker } from "node:worker_threads";
import type { TlsFiles } from "../../shared/adapters/nats/connection.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import type { Heartbeat } from "../../shared/contract/ownership.js";
import type { RoleCredentials } from "../../shared/contract/permissions.js";

export interface KeepAliveOptions {
  /** NATS servers for the thread's own connection. */
  servers: string[];
  /** The connection's name, as the servers show it. */
  name: string;
  /** The worker role's credentials, when the cluster has them. */
  auth?: RoleCredentials | undefined;
  /** TLS files, when the servers serve TLS. */
  tls?: TlsFiles | undefined;
  /** The worker's heartbeat interval, ms. */
  heartbeatMs: number;
  /**
   * Longest silence of the event loop that keep-alives cover, ms. Past it the worker goes
   * silent, and the coordinator moves its shards after its failure timeout.
   */
  stallLimitMs: number;
  /** Told when the loop beats again after keep-alives covered it (or ran out). */
  onStall?(s: StallReport): void;
  /**
   * Told when the thread ends without being stopped (it failed): heartbeats then depend on
   * the event loop alone, as without a keep-alive.
   */
  onEnded?(err: Error): void;
  /** The thread's compiled module; defaults to the one next to this module. */
  script?: URL | string;
}

export interface StallReport {
  /** Time between the loop's two heartbeats around the stall, ms. */
  stalledMs: number;
  /** Keep-alives the thread sent meanwhile. */
  keepAlives: number;
  /** True when the stall outlasted `stallLimitMs` and the keep-alives stopped. */
  expired: boolean;
}

/** Passed to the thread as its `workerData`. */
export interface KeepAliveThreadData {
  servers: string[];
  name: string;
  auth?: RoleCredentials | undefined;
  tls?: TlsFiles | undefined;
  heartbeatMs: number;
  stallLimitMs: number;
}

export type ToKeepAlive = { type: "beat"; hb: Heartbeat } | { type: "stop" };
export type FromKeepAlive =
  | { type: "ready" }
  | { type: "failed"; message: string }
  | ({ type: "stall" } & StallReport);

export class HeartbeatKeepAlive {
  private thread: Worker | null = null;
  /** Resolves when the thread has exited, for whatever reason. */
  private exited: Promise<void> = Promise.resolve();
  private started: Promise<void> | null = null;
  private stopped: Promise<void> | null = null;

  constructor(private readonly o: KeepAliveOptions) {}

  /** Starts the thread; resolves once its connection is up. Idempotent. */
  start(): Promise<void> {
    this.started ??= new Promise<void>((resolve, reject) => {
      const data: KeepAliveThreadData = {
        servers: this.o.servers,
        name: this.o.name,
        auth: this.o.auth,
        tls: this.o.tls,
        heartbeatMs: this.o.heartbeatMs,
        stallLimitMs: this.o.stallLimitMs,
      };
      const t = new Worker(this.o.script ?? new URL("./keep-alive-thread.js", import.meta.url), {
        workerData: data,
      });
      this.thread = t;
      this.exited = new Promise((done) => t.once("exit", () => done()));
      // The thread never keeps the process alive: a worker exits when its own work is done.
      t.unref();
      let ready = false;
      const ended = (err: Error): void => {
        if (!ready) reject(err);
        else if (!this.stopped) this.o.onEnded?.(err);
      };
      t.on("message", (m: FromKeepAlive) => {
        if (m.type === "ready") {
          ready = true;
          resolve();
        } else if (m.type === "failed")
          reject(
            new SluiceError(ErrorCode.Unavailable, `keep-alive thread: ${m.message}`, { retryable: true }),
          );
        else this.o.onStall?.({ stalledMs: m.stalledMs, keepAlives: m.keepAlives, expired: m.expired });
      });
      t.on("error", ended);
      t.on("exit", (code) =>
        ended(
          new SluiceError(ErrorCode.Unavailable, `keep-alive thread exited (${code})`, { retryable: true }),
        ),
      );
    });
    return this.started;
  }

  /** Hands the thread the heartbeat the loop is sending now. */
  beat(hb: Heartbeat): void {
    if (this.stopped) return;
    this.thread?.postMessage({ type: "beat", hb } satisfies ToKeepAlive);
  }

  /** Stops the keep-alives and closes the thread's connection. Idempotent. */
  stop(): Promise<void> {
    if (!this.stopped) {
      this.thread?.postMessage({ type: "stop" } satisfies ToKeepAlive);
      this.stopped = this.exited;
    }
    return this.stopped;
  }
}
