/**
 * Publishing throughput, the sluice producer against `js.publish()`, on the same stream in
 * the same run. Both send the same pre-encoded records to `ingest.P.<key>` with a `Nats-Msg-Id`
 * header, and count a record only once its PubAck has arrived.
 */
import { jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { encodeRecord } from "../../shared/contract/codec.js";
import { ingestSubject } from "../../shared/contract/wire.js";
import { Producer, type PublishResult } from "../../shared/producer/producer.js";

export interface RecordBatch {
  ids: string[];
  keys: string[];
  data: Uint8Array[];
}

/** `count` records of about `bytes` bytes each, spread over `keys` keys. */
export function makeRecords(prefix: string, count: number, keys = 1024, bytes = 256): RecordBatch {
  const body = "x".repeat(Math.max(0, bytes - 64));
  const out: RecordBatch = { ids: [], keys: [], data: [] };
  for (let i = 0; i < count; i++) {
    const id = `${prefix}-${i}`;
    const key = `k${i % keys}`;
    out.ids.push(id);
    out.keys.push(key);
    out.data.push(encodeRecord({ id, key, n: i, at: Date.now(), body }));
  }
  return out;
}

export interface Rate {
  records: number;
  seconds: number;
  perSecond: number;
  /** Sink transactions, where the measurement commits. */
  batches?: number;
  /** Shard runs started over after a failure, where the measurement reads shards. */
  restarts?: number;
  /**
   * Seconds from the first shard's first delivery, where the clock starts, to the last shard's,
   * where the measurement reads shards: time in which not every shard was reading yet.
   */
  startSpreadS?: number;
}

/** `records` over `ms` milliseconds. */
export const rate = (records: number, ms: number): Rate => ({
  records,
  seconds: ms / 1000,
  perSecond: records / (ms / 1000),
});

/** `js.publish()` per record, at most `window` awaiting their PubAck at once. */
export async function jsPublishRate(
  nc: NatsConnection,
  pipeline: string,
  r: RecordBatch,
  window = 1_000,
): Promise<Rate> {
  const js = jetstream(nc, { timeout: 10_000 });
  const t0 = performance.now();
  let acked = 0;
  const inflight = new Set<Promise<void>>();
  for (let i = 0; i < r.ids.length; i++) {
    if (inflight.size >= window) await Promise.race(inflight);
    const p: Promise<void> = js
      .publish(ingestSubject(pipeline, r.keys[i]!), r.data[i]!, { msgID: r.ids[i]! })
      .then(() => {
        acked++;
      })
      .finally(() => inflight.delete(p));
    inflight.add(p);
  }
  await Promise.all(inflight);
  if (acked !== r.ids.length) throw new Error(`js.publish: ${acked} of ${r.ids.length} acknowledged`);
  return rate(acked, performance.now() - t0);
}

/** The sluice producer: pipelined publishes under one reply inbox, a bounded PubAck window. */
export async function producerRate(
  nc: NatsConnection,
  pipeline: string,
  r: RecordBatch,
  window?: number,
): Promise<Rate> {
  const producer = new Producer(nc, pipeline, window ? { window, retries: 5, timeoutMs: 3_000 } : undefined);
  let acked = 0;
  const onResult = (res: PublishResult): void => {
    if (res.status === "acked") acked++;
  };
  const t0 = performance.now();
  for (let i = 0; i < r.ids.length; i++) {
    const record = { id: r.ids[i]!, key: r.keys[i]!, data: r.data[i]! };
    while (!producer.offer(record, onResult)) await producer.ready();
  }
  await producer.close();
  if (acked !== r.ids.length) throw new Error(`producer: ${acked} of ${r.ids.length} acknowledged`);
  return rate(acked, performance.now() - t0);
}
