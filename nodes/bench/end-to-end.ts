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
import pg from "pg";
import { encodeRecord, payloadJson } from "../../shared/contract/codec.js";
import type { SinkInspector } from "../../shared/contract/ports.js";
import {
  Headers,
  inputStream,
  inputStreamSubjects,
  inputStreamTransform,
} from "../../shared/contract/wire.js";
import { decodeRecord } from "../../shared/pipeline/stages/decode-stage.js";
import { Producer, type PublishResult } from "../../shared/producer/producer.js";
import type { ClusterFile } from "../cli/cluster-file.js";
import { countCommitted } from "../cli/verify.js";
import { waitUntil } from "../cli/wait.js";
import { clusterCpu, cpuPerRecord, cpuText, type RoleCpuPerRecord } from "./process-cpu.js";
import { makeRecords, producerRate, type Rate, rate } from "./publish-rates.js";

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

/** Where the naive pipeline writes: one statement per record, awaited before the ack. */
export interface NaiveStore {
  insert(r: { recordId: string; key: string; sourceSeq: number; payload: string }): void | Promise<void>;
  close(): Promise<void>;
}

/** The naive pipeline's SQLite table. */
export function naiveSqlite(dbPath: string): NaiveStore {
  const db = new Database(dbPath);
  db.pragma("journal_mode = WAL");
  db.pragma("synchronous = NORMAL");
  db.exec(`CREATE TABLE IF NOT EXISTS naive (
    row_id INTEGER PRIMARY KEY, record_id TEXT NOT NULL, key TEXT NOT NULL,
    source_seq INTEGER NOT NULL, payload TEXT NOT NULL, committed_at INTEGER NOT NULL)`);
  const insert = db.prepare(
    "INSERT INTO naive (record_id, key, source_seq, payload, committed_at) VALUES (?, ?, ?, ?, ?)",
  );
  return {
    insert: (r) => void insert.run(r.recordId, r.key, r.sourceSeq, r.payload, Date.now()),
    close: async () => {
      db.close();
    },
  };
}

/** The naive pipeline's PostgreSQL table, one INSERT per record over one connection. */
export async function naivePostgres(url: string): Promise<NaiveStore> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  await client.query(`CREATE TABLE IF NOT EXISTS naive (
    row_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, record_id text NOT NULL, key text NOT NULL,
    source_seq bigint NOT NULL, payload jsonb NOT NULL, committed_at bigint NOT NULL)`);
  return {
    insert: async (r) => {
      await client.query(
        "INSERT INTO naive (record_id, key, source_seq, payload, committed_at) VALUES ($1, $2, $3, $4, $5)",
        [r.recordId, r.key, r.sourceSeq, r.payload, Date.now()],
      );
    },
    close: () => client.end(),
  };
}

/**
 * The naive pipeline, publisher and consumer running at once in this process: `js.publish()`
 * per record, each awaited; a consumer that writes each record with its own statement and acks
 * it once the statement returned.
 */
export async function naiveEndToEndRate(
  nc: NatsConnection,
  store: NaiveStore,
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
  const js = jetstream(nc, { timeout: 10_000 });
  const consumer = await js.consumers.get(name, "naive");
  const t0 = performance.now();
  let inserted = 0;
  const messages = await consumer.consume();
  const consuming = (async () => {
    for await (const m of messages) {
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
        await store.insert({
          recordId: r.record.recordId,
          key: r.record.key,
          sourceSeq: r.record.sourceSeq,
          payload: payloadJson(r.record.value),
        });
      m.ack();
      if (++inserted >= count) return;
    }
  })();
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
    consuming,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error("naive pipeline timed out")), 300_000);
    }),
  ]).finally(() => clearTimeout(timer));
  const ms = performance.now() - t0;
  await messages.close().catch(() => undefined);
  await store.close();
  await jsm.streams.delete(name).catch(() => false);
  return rate(inserted, ms);
}

/**
 * The producer alone, at its full speed, into an R3 stream of the same layout as a pipeline's
 * (ingest subjects partitioned by the stream's subject transform) on the same cluster: what the
 * end-to-end rates are measured against.
 */
export async function publishOnlyRate(nc: NatsConnection, count: number, prefix: string): Promise<Rate> {
  return withBaselineStream(nc, `pub_${prefix}`, (p) => producerRate(nc, p.name, makeRecords(prefix, count)));
}

/** A pipeline's streams as the baselines lay them out: 16 shards in one shared stream. */
export type BaselinePipeline = { name: string; shards: number; streams: "shared" };

/**
 * Runs `fn` with an R3 file stream of pipeline `name`'s layout (16 shards in one stream, ingest
 * subjects partitioned by the stream's subject transform), deleted afterwards.
 */
export async function withBaselineStream<T>(
  nc: NatsConnection,
  name: string,
  fn: (p: BaselinePipeline) => Promise<T>,
): Promise<T> {
  const p: BaselinePipeline = { name, shards: 16, streams: "shared" };
  const jsm = await jetstreamManager(nc, { timeout: 10_000 });
  const transform = inputStreamTransform(p);
  await jsm.streams.add({
    name: inputStream(p, 0),
    subjects: [inputStreamSubjects(p, 0)],
    num_replicas: 3,
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    ...(transform ? { subject_transform: transform } : {}),
  });
  try {
    return await fn(p);
  } finally {
    await jsm.streams.delete(inputStream(p, 0)).catch(() => false);
  }
}

/** One round of a comparison: the producer alone, then end to end, records/s. */
export interface EndToEndRound {
  publish: number;
  e2e: number;
}

/** An end-to-end rate with its baseline, and the CPU per record and role (µs) of each. */
export interface EndToEndPair {
  /** The rates and CPU of the round whose ratio is the median (the lower one of two middles). */
  publish: Rate;
  e2e: Rate;
  cpu: { publish: RoleCpuPerRecord; e2e: RoleCpuPerRecord };
  /** Every round, in the order run. */
  rounds: EndToEndRound[];
  /** Records sent end to end before the first round and not measured. */
  warmup: number;
}

/**
 * The round whose ratio of end-to-end to producer-alone rate is the median: the lower of the two
 * middle ones for an even count, so that two rounds give the worse one.
 */
export function medianRound<T extends { publish: Rate; e2e: Rate }>(rounds: readonly T[]): T {
  if (rounds.length === 0) throw new Error("no rounds");
  const ratio = (m: T): number => m.e2e.perSecond / m.publish.perSecond;
  const sorted = [...rounds].sort((a, b) => ratio(a) - ratio(b));
  return sorted[Math.floor((sorted.length - 1) / 2)]!;
}

/**
 * End to end against the producer alone on cluster `c`, in `rounds` alternating rounds after a
 * warm-up: each round the producer alone into an R3 stream (`publishOnlyRate`), then `records`
 * end to end into the demo pipeline's sink (`sluiceEndToEndRate`), with the CPU every role of the
 * cluster spent per record in each. On shared cores the rates' ratio is about the inverse of the
 * CPU ratio, so the roles say what limits the end-to-end rate.
 *
 * The warm-up (a fifth of `records`, at least 5,000) runs the workers' code through V8's
 * optimising compiler and fills the sink's caches first: the workers start with the cluster, so
 * without it the first round measures their start-up against a producer already warm from the
 * parts before. The figure is the round with the median ratio; two rounds side by side cancel the
 * drift of a shared host's speed, which moves both rates of a round alike.
 */
export async function publishThenEndToEnd(
  c: ClusterFile,
  nc: NatsConnection,
  sink: SinkInspector,
  records: number,
  o: {
    publishPrefix: string;
    e2ePrefix: string;
    into: string;
    rounds: number;
    log: (line: string) => void;
  },
): Promise<EndToEndPair> {
  const warmup = Math.max(5_000, Math.round(records / 5));
  const warm = await sluiceEndToEndRate(nc, "demo", sink, warmup, `${o.e2ePrefix}_warm`);
  o.log(`warm-up: ${warmup} records end to end into ${o.into} at ${Math.round(warm.perSecond)}/s`);
  const measured: Array<Omit<EndToEndPair, "rounds" | "warmup">> = [];
  for (let r = 0; r < Math.max(1, o.rounds); r++) {
    const cpu0 = clusterCpu(c);
    const publish = await publishOnlyRate(nc, records, `${o.publishPrefix}${r}`);
    const cpu1 = clusterCpu(c);
    const publishCpu = cpuPerRecord(cpu0, cpu1, records);
    o.log(
      `round ${r + 1}: producer alone into an R3 stream: ${Math.round(publish.perSecond)}/s; ${cpuText(publishCpu)}`,
    );
    const e2e = await sluiceEndToEndRate(nc, "demo", sink, records, `${o.e2ePrefix}${r}`);
    const e2eCpu = cpuPerRecord(cpu1, clusterCpu(c), records);
    o.log(
      `round ${r + 1}: sluice: ${Math.round(e2e.perSecond)}/s end to end into ${o.into} (${(e2e.perSecond / publish.perSecond).toFixed(2)}x); ${cpuText(e2eCpu)}`,
    );
    measured.push({ publish, e2e, cpu: { publish: publishCpu, e2e: e2eCpu } });
  }
  return {
    ...medianRound(measured),
    rounds: measured.map((m) => ({ publish: m.publish.perSecond, e2e: m.e2e.perSecond })),
    warmup,
  };
}
