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
  const onResult = (r: PublishResult): void => {
    p[r.status]++;
    out.write(
      `${JSON.stringify({ id: r.id, status: r.status, stream: r.stream ?? null, seq: r.seq ?? null })}\n`,
    );
  };
  let lastReport = 0;
  for (let i = 0; i < o.count; i++) {
    if (o.signal?.aborted) break;
    const due = o.rate > 0 ? start + (i * 1000) / o.rate : 0;
    const wait = due - Date.now();
    if (wait > 1) await new Promise((r) => setTimeout(r, wait));
    // A loader behind schedule would otherwise chain microtasks and starve timers and I/O.
    else if (i % 128 === 0) await new Promise((r) => setImmediate(r));
    let record: { id: string; key: string; data: Uint8Array };
    if (o.record) record = o.record(i);
    else {
      const id = `${runId}-${i}`;
      const key = `k${i % o.keys}`;
      record = { id, key, data: encodeRecord({ id, key, n: i, at: Date.now(), body }) };
    }
    // `offer` does not yield while the window has room, so consecutive publishes share a write.
    while (!producer.offer(record, onResult)) await producer.ready();
    p.sent++;
    if (o.onProgress && Date.now() - lastReport > 200) {
      lastReport = Date.now();
      o.onProgress({ ...p });
    }
  }
  await producer.close();
  await new Promise<void>((r) => out.end(r));
  o.onProgress?.({ ...p });
  return { ...p, runId, elapsedMs: Date.now() - start };
}
