/**
 * End to end into the sink, in the same run: sluice (pipelined producer, workers committing
 * batches through the sink process) against a naive pipeline in one process (`js.publish()`
 * per record, each awaited; `consume()` with one ack per message; one INSERT per row).
 */
import {
  AckPolicy,
  DeliverPolicy,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
} from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import Database from "better-sqlite3";
import { encodeRecord, payloadJson } from "../../shared/contract/codec.js";
import type { SinkInspector } from "../../shared/contract/ports.js";
import { Headers } from "../../shared/contract/wire.js";
import { decodeRecord } from "../../shared/pipeline/stages/decode-stage.js";
import { Producer, type PublishResult } from "../../shared/producer/producer.js";
import { countCommitted } from "../cli/verify.js";
import { waitUntil } from "../cli/wait.js";
import type { Rate } from "./publish-rates.js";

const rate = (records: number, ms: number): Rate => ({
  records,
  seconds: ms / 1000,
  perSecond: records / (ms / 1000),
});

const body = "x".repeat(192);

/**
 * Publishes `count` records to `pipeline` with the producer as fast as its window allows and
 * times until the sink holds `before + count` rows.
 */
export async function sluiceEndToEndRate(
  nc: NatsConnection,
  pipeline: string,
  sink: SinkInspector,
  count: number,
  prefix: string,
): Promise<Rate> {
  const before = await countCommitted(sink, pipeline);
  const producer = new Producer(nc, pipeline);
  let acked = 0;
  const onResult = (r: PublishResult): void => {
    if (r.status === "acked") acked++;
  };
  const t0 = performance.now();
  for (let i = 0; i < count; i++) {
    const id = `${prefix}-${i}`;
    const key = `k${i % 1024}`;
    const record = { id, key, data: encodeRecord({ id, key, n: i, at: Date.now(), body }) };
    while (!producer.offer(record, onResult)) await producer.ready();
    // Leave the event loop room for PubAcks and the sink poll below.
    if (i % 256 === 0) await new Promise((r) => setImmediate(r));
  }
  await producer.close();
  if (acked !== count) throw new Error(`sluice e2e: ${acked} of ${count} acknowledged`);
  await waitUntil(
    "the sink to hold every record",
    300_000,
    async () => ((await countCommitted(sink, pipeline)) >= before + count ? true : undefined),
    20,
  );
  return rate(count, performance.now() - t0);
}

/** The naive pipeline, publisher and consumer running at once in this process. */
export async function naiveEndToEndRate(
  nc: NatsConnection,
  dbPath: string,
  count: number,
  prefix: string,
  replicas: number,
): Promise<Rate> {
  const name = `NAIVE_${prefix}`;
  const subjectRoot = `naive.${prefix}`;
  const jsm = await jetstreamManager(nc, { timeout: 10_000 });
  await jsm.streams.add({
    name,
    subjects: [`${subjectRoot}.>`],
    num_replicas: replicas,
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
  });
  await jsm.consumers.add(name, {
    durable_name: "naive",
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    max_ack_pending: 1_000,
  });
  const db = new Database(dbPath);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = NORMAL");
  db.exec(`CREATE TABLE IF NOT EXISTS naive (
    row_id INTEGER PRIMARY KEY, record_id TEXT NOT NULL, key TEXT NOT NULL,
    source_seq INTEGER NOT NULL, payload TEXT NOT NULL, committed_at INTEGER NOT NULL)`);
  const insert = db.prepare(
    "INSERT INTO naive (record_id, key, source_seq, payload, committed_at) VALUES (?, ?, ?, ?, ?)",
  );
  const js = jetstream(nc, { timeout: 10_000 });
  const consumer = await js.consumers.get(name, "naive");
  const t0 = performance.now();
  let inserted = 0;
  let finish: () => void = () => undefined;
  const finished = new Promise<void>((r) => {
    finish = r;
  });
  const messages = await consumer.consume({
    callback: (m) => {
      const r = decodeRecord({
        seq: m.seq,
        deliverySeq: m.info.deliverySequence,
        subject: m.subject,
        data: m.data,
        // The naive pipeline keeps the key in the subject too.
        headers: { [Headers.msgId]: m.headers?.get(Headers.msgId) ?? "" },
        token: m,
      });
      if (r.ok)
        insert.run(
          r.record.recordId,
          r.record.key,
          r.record.sourceSeq,
          payloadJson(r.record.value),
          Date.now(),
        );
      m.ack();
      if (++inserted >= count) finish();
    },
  });
  // The naive producer awaits each record's PubAck before sending the next.
  for (let i = 0; i < count; i++) {
    const id = `${prefix}-${i}`;
    const key = `k${i % 1024}`;
    await js.publish(`${subjectRoot}.${key}`, encodeRecord({ id, key, n: i, at: Date.now(), body }), {
      msgID: id,
    });
  }
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([
    finished,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error("naive pipeline timed out")), 300_000);
    }),
  ]).finally(() => clearTimeout(timer));
  const ms = performance.now() - t0;
  await messages.close().catch(() => undefined);
  db.close();
  await jsm.streams.delete(name).catch(() => false);
  return rate(inserted, ms);
}
