/**
 * Reference tables on NATS KV (README "Enrichment"): table T is bucket `sluice_ref_T`, JSON
 * values keyed by the lookup value; a revision is a sequence of its stream `KV_sluice_ref_T`.
 *
 * `JetStreamReferenceTables` is a worker's view: per table one cache (`ReferenceCache`) and one
 * watch, shared by every stage of every pipeline in the process. The watch is an ordered consumer
 * over the whole bucket: first each key's last change (the snapshot), then every change in order;
 * it resumes after the last sequence it delivered when the connection or the server drops it.
 * The cache answers as of its revision once the snapshot is in (the stream's last sequence read
 * after the consumer was made has been delivered). After that every sequence must arrive: one
 * that never does was removed before the watch saw it (a key rewritten past the bucket's history
 * while the watch lagged), and the cache can no longer vouch for anything after it. It then stays
 * as it was, answering as of the last revision before the gap, while a new snapshot loads, and
 * is replaced by it once loaded.
 *
 * The writes of `sluice ref` (`putReference`, `loadReferences`) are compare-and-set on the key's
 * revision, so every change names the one it replaced (`Nats-Expected-Last-Subject-Sequence`).
 */
import {
  DeliverPolicy,
  JetStreamApiCodes,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
  type MsgRequest,
} from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { MsgHdrs, NatsConnection } from "@nats-io/transport-node";
import { type Logger, silentLogger } from "../../contract/logger.js";
import { refBucket } from "../../contract/wire.js";
import {
  entryAsOf,
  loadingTableReason,
  noTableReason,
  ReferenceCache,
  type ReferenceChange,
  type ReferenceEntry,
  type RetainedChange,
} from "../../core/reference-cache.js";
import {
  CachedReferenceTable,
  type ReferenceTable,
  type ReferenceTables,
} from "../../pipeline/stages/enrich-stage.js";
import { apiCode, unavailable } from "./jetstream-errors.js";

/**
 * Changes a reference bucket keeps per key (the KV history): how far back a lookup the cache
 * cannot answer is still answered exactly by the bucket (`resolve`).
 */
export const REF_HISTORY = 8;

const refStream = (bucket: string): string => `KV_${bucket}`;
const refPrefix = (bucket: string): string => `$KV.${bucket}.`;
const dec = new TextDecoder();
const enc = new TextEncoder();

/** A stored message of a reference bucket, as a consumer or a message read gives it. */
interface RefMessage {
  seq: number;
  subject: string;
  headers: MsgHdrs | undefined;
  data: Uint8Array;
}

/**
 * The change a message of `bucket` holds; null for a subject outside the bucket's keys. A value
 * that is not JSON counts as no entry (a deletion), like a delete or purge marker.
 */
export function changeOf(bucket: string, m: RefMessage): ReferenceChange | null {
  const prefix = refPrefix(bucket);
  if (!m.subject.startsWith(prefix)) return null;
  const key = m.subject.slice(prefix.length);
  const op = m.headers?.get("KV-Operation") ?? "";
  const marker = m.headers?.get("Nats-Marker-Reason") ?? "";
  const expected = m.headers?.get("Nats-Expected-Last-Subject-Sequence") ?? "";
  const previous = /^\d{1,15}$/.test(expected) ? Number(expected) : undefined;
  let deleted = op === "DEL" || op === "PURGE" || marker !== "";
  let value: unknown;
  if (!deleted) {
    try {
      value = JSON.parse(dec.decode(m.data));
    } catch {
      deleted = true;
    }
  }
  return { key, revision: m.seq, value, deleted, ...(previous === undefined ? {} : { previous }) };
}

/** The message at or after `seq` on `subject` (the leader's copy); null when there is none. */
async function nextOn(
  jsm: JetStreamManager,
  stream: string,
  subject: string,
  seq: number,
): Promise<RefMessage | null> {
  try {
    // The server's message-get takes `next_by_subj`; the client's type names only seq / last.
    const sm = await jsm.streams.getMessage(stream, { seq, next_by_subj: subject } as unknown as MsgRequest);
    return sm ? { seq: sm.seq, subject: sm.subject, headers: sm.header, data: sm.data } : null;
  } catch (err) {
    if (apiCode(err) === JetStreamApiCodes.NoMessageFound) return null;
    throw unavailable(`cannot read ${stream}`, err);
  }
}

/**
 * The entry for `key` of `table` as of revision `asOf`, from the bucket (its leader): from the
 * changes it still holds for the key, one read each. Undefined when the bucket no longer holds
 * that far back.
 */
export async function readAsOf(
  jsm: JetStreamManager,
  table: string,
  key: string,
  asOf: number,
): Promise<ReferenceEntry | null | undefined> {
  const bucket = refBucket(table);
  const stream = refStream(bucket);
  const subject = refPrefix(bucket) + key;
  let history: number;
  try {
    history = (await jsm.streams.info(stream)).config.max_msgs_per_subject;
  } catch (err) {
    throw unavailable(`cannot read ${stream}`, err);
  }
  // Every change held for the key (at most its history): whether they are all it ever had
  // decides whether "none held at or before asOf" means "none then".
  const held: RetainedChange[] = [];
  let purged = false;
  for (let seq = 1; ; ) {
    const m = await nextOn(jsm, stream, subject, seq);
    const c = m && changeOf(bucket, m);
    if (!c) break;
    if (held.length === 0)
      purged = m.headers?.get("KV-Operation") === "PURGE" || m.headers?.has("Nats-Marker-Reason") === true;
    held.push(c);
    seq = c.revision + 1;
  }
  return entryAsOf(held, asOf, !purged && (history <= 0 || held.length < history));
}

export interface JetStreamReferenceTablesOptions {
  log?: Logger;
  /**
   * Keys a table's cache may hold (deleted ones included), default 1 000 000: past it the table
   * is dropped from memory and its shards wait, naming the limit, rather than the worker running
   * out of memory.
   */
  maxKeys?: number;
  /** Between attempts to open a table's watch, ms (default 1 000). */
  retryMs?: number;
}

class JetStreamReferenceTable extends CachedReferenceTable {
  private readonly bucket: string;
  private readonly stream: string;
  private why: string;
  private stopped = false;
  private stopWatch: (() => void) | null = null;
  /** Ends the pause between two attempts at once (on stop). */
  private wake: (() => void) | null = null;
  private readonly finished: Promise<void>;

  constructor(
    name: string,
    private readonly nc: NatsConnection,
    private readonly jsm: Promise<JetStreamManager>,
    private readonly opts: Required<JetStreamReferenceTablesOptions>,
  ) {
    super(name);
    this.bucket = refBucket(name);
    this.stream = refStream(this.bucket);
    this.why = loadingTableReason(name);
    this.finished = this.run();
  }

  waiting(): string | null {
    return this.cache ? null : this.why;
  }

  async resolve(key: string, asOf: number): Promise<ReferenceEntry | null> {
    const found = await readAsOf(await this.jsm, this.name, key, asOf);
    return found === undefined ? this.historyGone(key, asOf) : found;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.stopWatch?.();
    this.wake?.();
    await this.finished;
  }

  /** Watches the table until stopped: a watch that ends is opened again (with a new snapshot). */
  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      try {
        const why = await this.watch();
        failures = 0;
        if (!this.stopped) this.opts.log.info({ table: this.name, reason: why }, "reference table reloads");
      } catch (err) {
        failures++;
        if (!this.stopped && failures === 1)
          this.opts.log.warn(
            { table: this.name, err: (err as Error).message },
            "reference table watch failed",
          );
      }
      if (failures > 0 && !this.stopped)
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.min(this.opts.retryMs * failures, 5_000));
          this.wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      this.wake = null;
    }
  }

  /**
   * One watch: loads a snapshot into a new cache, installs it, then applies every change until
   * the watch ends or a change went missing. Returns why it ended; throws when it could not run.
   */
  private async watch(): Promise<string> {
    const jsm = await this.jsm;
    try {
      await jsm.streams.info(this.stream);
    } catch (err) {
      if (apiCode(err) === JetStreamApiCodes.StreamNotFound && !this.cache)
        this.why = noTableReason(this.name, this.bucket);
      throw err;
    }
    const consumer = await jetstream(this.nc).consumers.get(this.stream, {
      filter_subjects: `${refPrefix(this.bucket)}>`,
      deliver_policy: DeliverPolicy.LastPerSubject,
    });
    // Read after the consumer was made: its snapshot ends at or before this sequence.
    const after = (await jsm.streams.info(this.stream)).state;
    const cache = new ReferenceCache();
    let loaded = false;
    let last = 0;
    const loadedAt = (rev: number): void => {
      cache.advance(rev);
      last = cache.revision;
      loaded = true;
      this.install(cache);
    };
    if (after.messages === 0) loadedAt(after.last_seq);
    const it = await consumer.consume({ max_messages: 1_024, abort_on_missing_resource: true });
    this.stopWatch = () => void it.close().catch(() => undefined);
    if (this.stopped) this.stopWatch();
    // A snapshot whose last changes were all removed before delivery never delivers the one
    // that completes it: the consumer, having nothing more to deliver, completes it instead.
    const guard = setInterval(() => {
      if (loaded) return;
      void consumer
        .info()
        .then((ci) => {
          if (!loaded && ci.num_pending === 0 && ci.delivered.stream_seq <= last)
            loadedAt(Math.max(last, after.last_seq));
        })
        .catch(() => undefined);
    }, 2_000);
    try {
      for await (const m of it) {
        const c = changeOf(this.bucket, m);
        if (loaded) {
          if (m.seq <= last) continue;
          if (m.seq > last + 1)
            return `changes ${last + 1}..${m.seq - 1} were removed before the watch saw them`;
          if (c) cache.apply(c, true);
          cache.advance(m.seq);
          last = m.seq;
        } else {
          if (c) cache.apply(c, false);
          last = Math.max(last, m.seq);
          if (m.seq >= after.last_seq || m.info.pending === 0) loadedAt(Math.max(m.seq, after.last_seq));
        }
        if (cache.size > this.opts.maxKeys) {
          this.cache = null;
          this.why = `reference table "${this.name}" has more than ${this.opts.maxKeys} keys, more than a worker caches: waiting (raise the limit or split the table)`;
          this.stopped = true;
          return this.why;
        }
      }
      return "the watch ended";
    } finally {
      clearInterval(guard);
      this.stopWatch = null;
      await it.close().catch(() => undefined);
      await consumer.delete().catch(() => undefined);
    }
  }
}

export class JetStreamReferenceTables implements ReferenceTables {
  private readonly tables = new Map<string, JetStreamReferenceTable>();
  private readonly jsm: Promise<JetStreamManager>;
  private readonly opts: Required<JetStreamReferenceTablesOptions>;

  constructor(
    private readonly nc: NatsConnection,
    opts: JetStreamReferenceTablesOptions = {},
  ) {
    this.jsm = jetstreamManager(nc);
    // A rejection is seen by every use; none is left unhandled here.
    this.jsm.catch(() => undefined);
    this.opts = { log: silentLogger, maxKeys: 1_000_000, retryMs: 1_000, ...opts };
  }

  /** Table `name`, its watch started on first use. */
  table(name: string): ReferenceTable {
    let t = this.tables.get(name);
    if (!t) {
      t = new JetStreamReferenceTable(name, this.nc, this.jsm, this.opts);
      this.tables.set(name, t);
    }
    return t;
  }

  /** Stops every watch. */
  async close(): Promise<void> {
    await Promise.all([...this.tables.values()].map((t) => t.stop()));
  }
}

/* ---- The writes and reads of `sluice ref` ---- */

/**
 * Table `table`'s bucket; made (with `replicas`) when `create` is given and it does not exist,
 * else null when it does not.
 */
export async function openReferenceBucket(
  nc: NatsConnection,
  table: string,
  create?: { replicas: number },
): Promise<KV | null> {
  const kvm = new Kvm(nc);
  const bucket = refBucket(table);
  try {
    const kv = await kvm.open(bucket);
    await kv.status();
    return kv;
  } catch (err) {
    if (!create) {
      if (apiCode(err) === JetStreamApiCodes.StreamNotFound || /not found/i.test(String(err))) return null;
      throw unavailable(`cannot open ${bucket}`, err);
    }
  }
  // Reads (`ref get`) must see the leader's latest: no direct gets from a lagging replica.
  return kvm.create(bucket, {
    replicas: create.replicas,
    history: REF_HISTORY,
    allow_direct: false,
    description: `sluice reference table ${table}`,
  });
}

const isWrongLastSequence = (err: unknown): boolean =>
  apiCode(err) === JetStreamApiCodes.StreamWrongLastSequence ||
  /wrong last sequence/i.test(String((err as Error)?.message ?? err));

/**
 * Writes `value` under `key` as a compare-and-set on the key's revision (`expected`, or read
 * first), read again and retried when another writer came first. Returns the new revision.
 */
export async function putReference(kv: KV, key: string, value: unknown, expected?: number): Promise<number> {
  return (await putReferenceChange(kv, key, value, expected)).revision;
}

/**
 * `putReference`, also naming the key's revision the write replaced (0: none), for the audit
 * stream.
 */
export async function putReferenceChange(
  kv: KV,
  key: string,
  value: unknown,
  expected?: number,
): Promise<{ revision: number; previous: number }> {
  const data = enc.encode(JSON.stringify(value));
  let previous = expected;
  for (let attempt = 1; ; attempt++) {
    previous ??= (await kv.get(key))?.revision ?? 0;
    try {
      return { revision: await kv.put(key, data, { previousSeq: previous }), previous };
    } catch (err) {
      if (!isWrongLastSequence(err) || attempt >= 10) throw err;
      previous = undefined;
    }
  }
}

/** What a bucket holds now, per key: the revision and value text of its last change. */
async function currentEntries(
  nc: NatsConnection,
  table: string,
): Promise<Map<string, { revision: number; text: string | null }>> {
  const bucket = refBucket(table);
  const stream = refStream(bucket);
  const out = new Map<string, { revision: number; text: string | null }>();
  const jsm = await jetstreamManager(nc);
  const state = (await jsm.streams.info(stream)).state;
  if (state.messages === 0) return out;
  const consumer = await jetstream(nc).consumers.get(stream, {
    filter_subjects: `${refPrefix(bucket)}>`,
    deliver_policy: DeliverPolicy.LastPerSubject,
  });
  // Pulls of 2 s (idle heartbeats every 1 s): a pull the server lost or left unanswered is
  // noticed after two missed heartbeats and sent again, within about 2 s instead of the 30 s of
  // nats.js's default pull, which a command reading a table would otherwise sit out.
  const it = await consumer.consume({ max_messages: 1_024, expires: 2_000 });
  try {
    for await (const m of it) {
      const c = changeOf(bucket, m);
      if (c) out.set(c.key, { revision: c.revision, text: c.deleted ? null : dec.decode(m.data) });
      if (m.seq >= state.last_seq || m.info.pending === 0) break;
    }
  } finally {
    await it.close().catch(() => undefined);
    await consumer.delete().catch(() => undefined);
  }
  return out;
}

export interface LoadSummary {
  /** Keys written that had no entry. */
  added: number;
  /** Keys written with a different value. */
  changed: number;
  /** Keys whose entry already held the same value: not written, no new revision. */
  unchanged: number;
  /** The table's revision after the load (its last write); 0 when nothing was written. */
  revision: number;
}

/**
 * Writes `entries` into table `table` (bucket open as `kv`), `concurrency` writes at a time, each
 * a compare-and-set; a key whose stored value is the same JSON text is left alone.
 */
export async function loadReferences(
  nc: NatsConnection,
  kv: KV,
  table: string,
  entries: ReadonlyMap<string, unknown>,
  concurrency = 64,
): Promise<LoadSummary> {
  const current = await currentEntries(nc, table);
  const summary: LoadSummary = { added: 0, changed: 0, unchanged: 0, revision: 0 };
  const queue = [...entries];
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < queue.length) {
      const [key, value] = queue[next++]!;
      const had = current.get(key);
      const live = had !== undefined && had.text !== null;
      if (live && had.text === JSON.stringify(value)) {
        summary.unchanged++;
        continue;
      }
      const rev = await putReference(kv, key, value, had?.revision ?? 0);
      if (live) summary.changed++;
      else summary.added++;
      summary.revision = Math.max(summary.revision, rev);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, Math.max(1, queue.length)) }, worker));
  return summary;
}

/** The current entry for `key` (null: none, or deleted), read from the leader. */
export async function getReference(kv: KV, key: string): Promise<ReferenceEntry | null> {
  const e = await kv.get(key);
  if (e?.operation !== "PUT") return null;
  try {
    return { value: e.json<unknown>(), revision: e.revision };
  } catch {
    return null;
  }
}
