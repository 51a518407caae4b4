/** `sluice load`: publishes N records with unique ids and logs every confirmation. */

import { randomBytes } from "node:crypto";
import { createWriteStream } from "node:fs";
import type { NatsConnection } from "@nats-io/transport-node";
import { encodeRecord } from "../../shared/contract/codec.js";
import { defaultProducerOptions, Producer, type PublishResult } from "../../shared/producer/producer.js";

export interface LoadOptions {
  pipeline: string;
  count: number;
  /** Records per second; 0 for as fast as the window allows. */
  rate: number;
  ackLog: string;
  /** Distinct keys the records are spread over. */
  keys: number;
  window?: number;
  onProgress?(p: LoadProgress): void;
  /** Set to stop early (the records already sent are still confirmed and logged). */
  signal?: AbortSignal;
  /**
   * Stop early when records have waited this long (ms) with no PubAck for any of them, and
   * report those records `timeout` at once: the cluster stopped answering. Absent or 0: keep
   * publishing through any outage (a chaos run's load, whose time-outs the checker expects).
   */
  stallMs?: number;
  /** Set to stop waiting for the records still in flight after `signal`: they are logged `timeout`. */
  abandonSignal?: AbortSignal;
  /** The i-th record (default: a unique id, key `k<i mod keys>` and a small map). */
  record?(i: number): { id: string; key: string; data: Uint8Array };
}

export interface LoadProgress {
  sent: number;
  acked: number;
  failed: number;
  timeout: number;
}

export interface LoadSummary extends LoadProgress {
  runId: string;
  elapsedMs: number;
  /** Why the load ended before `count` records: `signal` (`aborted`) or `stallMs` (`stalled`). */
  stopped?: "aborted" | "stalled";
}

export async function runLoad(nc: NatsConnection, o: LoadOptions): Promise<LoadSummary> {
  const runId = randomBytes(4).toString("hex");
  const producer = new Producer(nc, o.pipeline, {
    ...defaultProducerOptions,
    window: o.window ?? defaultProducerOptions.window,
  });
  const out = createWriteStream(o.ackLog, { flags: "a" });
  const p: LoadProgress = { sent: 0, acked: 0, failed: 0, timeout: 0 };
  const body = "x".repeat(64);
  const start = Date.now();
  // Ends the sending loop, also while it waits for room in the window.
  let stopped: LoadSummary["stopped"];
  let wake: () => void = () => undefined;
  const woken = new Promise<void>((r) => {
    wake = r;
  });
  const stop = (why: NonNullable<LoadSummary["stopped"]>): void => {
    stopped ??= why;
    wake();
  };
  const onAbort = (): void => stop("aborted");
  if (o.signal?.aborted) onAbort();
  o.signal?.addEventListener("abort", onAbort, { once: true });
  const onAbandon = (): void => producer.abandon("the load was stopped before its PubAck arrived");
  o.abandonSignal?.addEventListener("abort", onAbandon, { once: true });
  // Records are waiting and none was acknowledged for `stallMs`: the cluster stopped answering.
  let answeredAt = Date.now();
  const stallMs = o.stallMs ?? 0;
  const watch =
    stallMs > 0
      ? setInterval(
          () => {
            const settled = p.acked + p.failed + p.timeout;
            if (producer.inFlight === 0 || settled === p.sent) answeredAt = Date.now();
            else if (Date.now() - answeredAt > stallMs) {
              stop("stalled");
              producer.abandon(`no PubAck for ${stallMs} ms`);
            }
          },
          Math.max(50, Math.min(1_000, stallMs / 4)),
        )
      : undefined;
  const onResult = (r: PublishResult): void => {
    p[r.status]++;
    if (r.status === "acked") answeredAt = Date.now();
    out.write(
      `${JSON.stringify({ id: r.id, status: r.status, stream: r.stream ?? null, seq: r.seq ?? null })}\n`,
    );
  };
  let lastReport = 0;
  try {
    for (let i = 0; i < o.count && stopped === undefined; i++) {
      const due = o.rate > 0 ? start + (i * 1000) / o.rate : 0;
      const wait = due - Date.now();
      if (wait > 1) await Promise.race([new Promise((r) => setTimeout(r, wait)), woken]);
      // A loader behind schedule would otherwise chain microtasks and starve timers and I/O.
      else if (i % 128 === 0) await new Promise((r) => setImmediate(r));
      if (stopped !== undefined) break;
      let record: { id: string; key: string; data: Uint8Array };
      if (o.record) record = o.record(i);
      else {
        const id = `${runId}-${i}`;
        const key = `k${i % o.keys}`;
        record = { id, key, data: encodeRecord({ id, key, n: i, at: Date.now(), body }) };
      }
      // `offer` does not yield while the window has room, so consecutive publishes share a write.
      while (stopped === undefined && !producer.offer(record, onResult))
        await Promise.race([producer.ready(), woken]);
      if (stopped !== undefined) break;
      p.sent++;
      if (o.onProgress && Date.now() - lastReport > 200) {
        lastReport = Date.now();
        o.onProgress({ ...p });
      }
    }
    await producer.close();
  } finally {
    clearInterval(watch);
    o.signal?.removeEventListener("abort", onAbort);
    o.abandonSignal?.removeEventListener("abort", onAbandon);
    await new Promise<void>((r) => out.end(r));
  }
  o.onProgress?.({ ...p });
  return { ...p, runId, elapsedMs: Date.now() - start, ...(stopped ? { stopped } : {}) };
}
