/**
 * A pipeline's dead letters as `sluice dlq` reads and replays them: the entries of its
 * `SLUICE_DLQ_<P>` stream (written by `JetStreamDeadLetterQueue`), filtered, summed by code, and
 * published again to `ingest.<P>.<key>`.
 *
 * A replay publishes each entry at most once, however often it runs and wherever an earlier run
 * crashed. Every entry has a marker in the `sluice_dlq_replays` bucket, key `<P>.<dlqSeq>`:
 * 1. The marker is created (create-only) as `claimed`, holding `inputSeq`, a sequence of the
 *    input stream read before the claim; only the run whose create succeeds, or one that found
 *    the marker `claimed`, ever publishes the entry.
 * 2. The publish carries `Nats-Msg-Id: replay-<P>-<dlqSeq>`, the same on every publish of the
 *    entry, and the original record id in `Sluice-Record-Id`.
 * 3. Only after the PubAck is the marker set `done` (with the stored sequence); a `done` entry
 *    is never published again.
 * A run that finds a `claimed` marker (an earlier run stopped between 1 and 3) reads the input
 * stream after `inputSeq`, on the entry's subject, for its `Nats-Msg-Id`: a publish of the
 * earlier run can only be stored above `inputSeq`. Found: the marker is set `done`. Not found:
 * it publishes. A publish still on its way, or a replica that has not stored it yet, is within
 * the duplicate window, where the server drops the second copy by its `Nats-Msg-Id`; beyond the
 * window, the scan sees it. So the input stream holds each entry's replay at most once, and the
 * pipeline commits each stored record once.
 */
import {
  DeliverPolicy,
  JetStreamApiCodes,
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
} from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { type MsgHdrs, type NatsConnection, headers as natsHeaders } from "@nats-io/transport-node";
import { decode as cborDecode } from "cbor-x";
import { jsonContentType, toJsonText } from "../../contract/codec.js";
import { ErrorCode, isSluiceError, SluiceError } from "../../contract/errors.js";
import {
  Buckets,
  deadLetterStream,
  Headers,
  ingestSubject,
  inputStream,
  keyOfSubject,
  REPLAY_MSG_ID_PREFIX,
  replayMsgId,
} from "../../contract/wire.js";
import { apiCode, unavailable } from "./jetstream-errors.js";
import { JetStreamJsonStore } from "./jetstream-json-store.js";

/** One dead letter as stored. */
export interface DeadLetterEntry {
  pipeline: string;
  /** Sequence in `SLUICE_DLQ_<P>`: what names the entry. */
  seq: number;
  /** `sluice.dlq.<P>.<shard>`. */
  subject: string;
  /** When it was dead-lettered (stored in the dead-letter stream), ms since the epoch. */
  timeMs: number;
  code: string;
  stage: string | undefined;
  message: string;
  /** The shard that held the record. */
  shard: number | undefined;
  /** Where the record was stored, `sluice.in.<P>.<shard>.<key>`. */
  sourceSubject: string | undefined;
  /** Its sequence in the input stream. */
  sourceSeq: number | undefined;
  /** Its `Sluice-Key`, else its subject's key. */
  key: string | undefined;
  /** The id the record was read with (`recordIdOfEntry`); none when it had none. */
  recordId: string | undefined;
  /** Every header of the entry, first value each. */
  headers: Record<string, string>;
  /** The original bytes; undefined when read without payloads. */
  data: Uint8Array | undefined;
}

/** Which entries a command takes. */
export interface DeadLetterFilter {
  /** Only this `Sluice-Error-Code`. */
  code?: string;
  /** Only entries dead-lettered at or after this time, ms since the epoch. */
  sinceMs?: number;
}

export const matchesFilter = (e: Pick<DeadLetterEntry, "code" | "timeMs">, f: DeadLetterFilter): boolean =>
  (f.code === undefined || e.code === f.code) && (f.sinceMs === undefined || e.timeMs >= f.sinceMs);

/** What `sluice dlq list` shows of one entry. */
export interface EntrySample {
  seq: number;
  /** ISO-8601. */
  time: string;
  code: string;
  stage: string | null;
  shard: number | null;
  sourceSeq: number | null;
  key: string | null;
  recordId: string | null;
  message: string;
}

export interface DeadLetterSummary {
  pipeline: string;
  stream: string;
  /** Matching entries. */
  total: number;
  /** Matching entries per code, the most frequent first. */
  byCode: Record<string, number>;
  /** The newest matching entries, oldest first. */
  sample: EntrySample[];
}

/** A replay marker (`Buckets.dlqReplays`, key `<P>.<dlqSeq>`). */
export type ReplayMarker =
  | {
      state: "claimed";
      /** The input stream's last sequence read before the claim: a publish of it lands above. */
      inputSeq: number;
      stream: string;
      /** The stored subject its publish lands on, `sluice.in.<P>.<shard>.<key>`. */
      subject: string;
      msgId: string;
      recordId: string;
      /** ISO-8601. */
      at: string;
    }
  | {
      state: "done";
      /** Its sequence in the input stream (of the first copy, when the PubAck was a duplicate). */
      seq: number;
      stream: string;
      msgId: string;
      recordId: string;
      at: string;
    };

export const replayMarkerKey = (pipeline: string, dlqSeq: number): string => `${pipeline}.${dlqSeq}`;

export interface ReplayReport {
  pipeline: string;
  /** Entries matching the filter. */
  matched: number;
  /** Published now. */
  replayed: number;
  /** Skipped: an earlier run had published them (marker `done`, found in the input stream, or a duplicate PubAck). */
  alreadyReplayed: number;
  /**
   * Skipped: a later dead letter of the same stored record (same shard and source sequence) as
   * an earlier entry; only the earliest is ever replayed, so the record is published once.
   */
  duplicates: number;
  /** Skipped: entries that cannot be published as their record was, with the reason. */
  unreplayable: Array<{ seq: number; reason: string }>;
}

/** The headers `JetStreamDeadLetterQueue` adds to a record's own. */
const deadLetterHeaders: ReadonlySet<string> = new Set([
  Headers.errorCode,
  Headers.errorMessage,
  Headers.errorStage,
  Headers.originalMsgId,
  Headers.sourceSubject,
  Headers.sourceSeq,
  Headers.shard,
]);

/**
 * The id the worker read the entry's record with, as `decodeRecord` chose it: its
 * `Nats-Msg-Id` (kept as `Sluice-Original-Msg-Id`), or `Sluice-Record-Id` when that id is a
 * replay's.
 */
export function recordIdOfEntry(h: Readonly<Record<string, string>>): string | undefined {
  const original = h[Headers.originalMsgId]?.trim() || undefined;
  if (!original?.startsWith(REPLAY_MSG_ID_PREFIX)) return original;
  return h[Headers.recordId]?.trim() || original;
}

/**
 * Where a replay of the record stored at `sourceSubject` is published: `ingest.<P>.<key>`, key
 * the subject's last token, which the servers map to the same shard and stored subject again.
 * Undefined unless `sourceSubject` is one of `pipeline`'s stored subjects,
 * `sluice.in.<P>.<shard>.<key>`.
 */
export function replaySubject(pipeline: string, sourceSubject: string | undefined): string | undefined {
  if (sourceSubject === undefined) return undefined;
  const t = sourceSubject.split(".");
  if (t.length !== 5 || t[0] !== "sluice" || t[1] !== "in" || t[2] !== pipeline) return undefined;
  if (!/^\d+$/.test(t[3]!) || !t[4]) return undefined;
  return ingestSubject(pipeline, keyOfSubject(sourceSubject));
}

/**
 * The headers a replay publishes with: the record's own as the producer sent them (the entry's
 * headers without those the dead-letter queue added, and without NATS's `Nats-*` ones, which
 * the server acts on), the original record id in `Sluice-Record-Id`, and `Nats-Msg-Id`
 * `replay-<P>-<dlqSeq>`.
 */
export function replayHeaders(
  entry: Readonly<Record<string, string>>,
  pipeline: string,
  dlqSeq: number,
  recordId: string,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(entry)) {
    if (deadLetterHeaders.has(k) || k.toLowerCase().startsWith("nats-")) continue;
    out[k] = v;
  }
  out[Headers.recordId] = recordId;
  out[Headers.msgId] = replayMsgId(pipeline, dlqSeq);
  return out;
}

/** A payload as `sluice dlq show` renders it. */
export type PayloadView =
  | { format: "json" | "cbor"; value: unknown }
  /** Neither JSON nor CBOR: the first 64 bytes as hex, and every byte as base64. */
  | { format: "bytes"; hex: string; base64: string };

const PREVIEW_BYTES = 64;
const strictUtf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * The payload as a JSON value when it decodes as one: as JSON first when its `Content-Type`
 * says so, else as CBOR, else as JSON; a byte preview otherwise. Unlike the decode stage, any
 * value is shown, not only a map.
 */
export function viewPayload(data: Uint8Array, contentType: string | undefined): PayloadView {
  const asJson = (): PayloadView | undefined => {
    try {
      return { format: "json", value: JSON.parse(strictUtf8.decode(data)) };
    } catch {
      return undefined;
    }
  };
  const asCbor = (): PayloadView | undefined => {
    try {
      // Through toJsonText: byte strings become {"$base64": …}, big integers strings.
      return { format: "cbor", value: JSON.parse(toJsonText(cborDecode(data))) };
    } catch {
      return undefined;
    }
  };
  const json = contentType !== undefined && jsonContentType.test(contentType);
  const view = data.length === 0 ? undefined : json ? (asJson() ?? asCbor()) : (asCbor() ?? asJson());
  if (view) return view;
  const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  return {
    format: "bytes",
    hex: bytes.subarray(0, PREVIEW_BYTES).toString("hex"),
    base64: bytes.toString("base64"),
  };
}

function headerRecord(h: MsgHdrs | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (h) for (const [k, v] of h) out[k] = v[0] ?? "";
  return out;
}

const numberOf = (v: string | undefined): number | undefined => {
  if (v === undefined || !/^\d+$/.test(v)) return undefined;
  return Number(v);
};

/** An entry from its stored parts. */
export function entryOf(
  pipeline: string,
  m: { seq: number; subject: string; timeMs: number; headers: Record<string, string>; data?: Uint8Array },
): DeadLetterEntry {
  const h = m.headers;
  const sourceSubject = h[Headers.sourceSubject] || undefined;
  return {
    pipeline,
    seq: m.seq,
    subject: m.subject,
    timeMs: m.timeMs,
    code: h[Headers.errorCode] ?? "",
    stage: h[Headers.errorStage] || undefined,
    message: h[Headers.errorMessage] ?? "",
    shard: numberOf(h[Headers.shard]),
    sourceSubject,
    sourceSeq: numberOf(h[Headers.sourceSeq]),
    key: h[Headers.key] || (sourceSubject ? keyOfSubject(sourceSubject) : undefined),
    recordId: recordIdOfEntry(h),
    headers: h,
    data: m.data,
  };
}

export const sampleOf = (e: DeadLetterEntry): EntrySample => ({
  seq: e.seq,
  time: new Date(e.timeMs).toISOString(),
  code: e.code,
  stage: e.stage ?? null,
  shard: e.shard ?? null,
  sourceSeq: e.sourceSeq ?? null,
  key: e.key ?? null,
  recordId: e.recordId ?? null,
  message: e.message,
});

const DLQ_PREFIX = deadLetterStream("");

/** An entry ready to publish: where, with what, and under which marker. */
interface PlannedReplay {
  entry: DeadLetterEntry;
  subject: string;
  /** Where the servers store it: the entry's source subject. */
  storedSubject: string;
  shard: number;
  headers: Record<string, string>;
  msgId: string;
  recordId: string;
  stream?: string;
}

/** Entries claimed and published together; each keeps its own marker. */
const REPLAY_BATCH = 128;

export class DeadLetterStore {
  private readonly js: JetStreamClient;
  private jsm: JetStreamManager | undefined;
  private readonly inputStreams = new Map<string, string>();

  constructor(
    private readonly nc: NatsConnection,
    /** Replicas of the marker bucket when it has to be created. */
    private readonly replicas: number,
  ) {
    this.js = jetstream(nc, { timeout: 10_000 });
  }

  private async manager(): Promise<JetStreamManager> {
    this.jsm ??= await jetstreamManager(this.nc);
    return this.jsm;
  }

  /** Pipelines with a dead-letter stream, by name. */
  async pipelines(): Promise<string[]> {
    const jsm = await this.manager();
    const out: string[] = [];
    for await (const name of jsm.streams.names()) {
      if (name.startsWith(DLQ_PREFIX) && name.length > DLQ_PREFIX.length)
        out.push(name.slice(DLQ_PREFIX.length));
    }
    return out.sort();
  }

  private async lastSeq(stream: string): Promise<{ messages: number; last: number } | null> {
    const jsm = await this.manager();
    try {
      const s = (await jsm.streams.info(stream)).state;
      return { messages: s.messages, last: s.last_seq };
    } catch (err) {
      if (apiCode(err) === JetStreamApiCodes.StreamNotFound) return null;
      throw unavailable(`cannot read stream ${stream}`, err);
    }
  }

  /**
   * Every entry of `pipeline`'s dead-letter stream stored when the read began, in order; with
   * `payload: false` without their bytes (the server sends headers only).
   */
  async *entries(pipeline: string, opts: { payload: boolean }): AsyncGenerator<DeadLetterEntry> {
    const stream = deadLetterStream(pipeline);
    const state = await this.lastSeq(stream);
    if (!state) {
      throw new SluiceError(
        ErrorCode.InvalidConfig,
        `no dead-letter stream ${stream}: no pipeline ${pipeline}`,
      );
    }
    if (state.messages === 0) return;
    const consumer = await this.js.consumers.get(stream, {
      deliver_policy: DeliverPolicy.All,
      ...(opts.payload ? {} : { headers_only: true }),
    });
    const it = await consumer.consume({ max_messages: 1_024 });
    try {
      for await (const m of it) {
        const headers = headerRecord(m.headers);
        if (!opts.payload) delete headers["Nats-Msg-Size"];
        yield entryOf(pipeline, {
          seq: m.seq,
          subject: m.subject,
          timeMs: Math.floor(Number(m.info.timestampNanos) / 1e6),
          headers,
          ...(opts.payload ? { data: m.data } : {}),
        });
        // Entries stored after the read began (a replayed record dead-lettered again) wait for
        // the next read.
        if (m.seq >= state.last || m.info.pending === 0) break;
      }
    } finally {
      await it.close().catch(() => undefined);
      await consumer.delete().catch(() => undefined);
    }
  }

  /** The entry at `seq` of `pipeline`'s dead-letter stream, with its bytes; null if none. */
  async entry(pipeline: string, seq: number): Promise<DeadLetterEntry | null> {
    const stream = deadLetterStream(pipeline);
    const jsm = await this.manager();
    try {
      const m = await jsm.streams.getMessage(stream, { seq });
      if (!m) return null;
      return entryOf(pipeline, {
        seq: m.seq,
        subject: m.subject,
        timeMs: m.time.getTime(),
        headers: headerRecord(m.header),
        data: m.data,
      });
    } catch (err) {
      const code = apiCode(err);
      if (code === JetStreamApiCodes.NoMessageFound) return null;
      if (code === JetStreamApiCodes.StreamNotFound) {
        throw new SluiceError(
          ErrorCode.InvalidConfig,
          `no dead-letter stream ${stream}: no pipeline ${pipeline}`,
        );
      }
      throw unavailable(`cannot read ${stream} sequence ${seq}`, err);
    }
  }

  /** Matching entries of `pipeline`: how many, per code, and the newest `sampleSize`. */
  async summary(pipeline: string, filter: DeadLetterFilter, sampleSize: number): Promise<DeadLetterSummary> {
    let total = 0;
    const byCode = new Map<string, number>();
    const newest: EntrySample[] = [];
    for await (const e of this.entries(pipeline, { payload: false })) {
      if (!matchesFilter(e, filter)) continue;
      total++;
      byCode.set(e.code, (byCode.get(e.code) ?? 0) + 1);
      if (sampleSize > 0) {
        newest.push(sampleOf(e));
        if (newest.length > sampleSize) newest.shift();
      }
    }
    const codes = [...byCode].sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
    return {
      pipeline,
      stream: deadLetterStream(pipeline),
      total,
      byCode: Object.fromEntries(codes),
      sample: newest,
    };
  }

  /**
   * The replay markers; `create` makes the bucket when the cluster lacks it (one provisioned
   * before it existed), else such a cluster has none (null).
   */
  private async markers(create: boolean): Promise<JetStreamJsonStore<ReplayMarker> | null> {
    const kvm = new Kvm(this.nc);
    try {
      const kv = await kvm.open(Buckets.dlqReplays);
      await kv.status();
      return new JetStreamJsonStore<ReplayMarker>(kv);
    } catch {
      if (!create) return null;
    }
    // As `provision` makes it: no direct gets, so a claim reads the leader's latest.
    const kv = await kvm.create(Buckets.dlqReplays, {
      replicas: this.replicas,
      history: 1,
      allow_direct: false,
    });
    return new JetStreamJsonStore<ReplayMarker>(kv);
  }

  /** The replay marker of `pipeline`'s entry `seq`, null if it was never replayed. */
  async marker(pipeline: string, seq: number): Promise<ReplayMarker | null> {
    const m = await this.markers(false);
    return m ? (await m.get(replayMarkerKey(pipeline, seq))).value : null;
  }

  /** The input stream that stores `pipeline`'s shard `shard`, whichever layout it has. */
  private async inputStreamOf(pipeline: string, shard: number): Promise<string> {
    const shared = inputStream({ name: pipeline, streams: "shared" }, shard);
    const own = inputStream({ name: pipeline, streams: "per-shard" }, shard);
    const known = this.inputStreams.get(shared) ?? this.inputStreams.get(own);
    if (known) return known;
    for (const s of [shared, own]) {
      if (await this.lastSeq(s)) {
        this.inputStreams.set(s, s);
        return s;
      }
    }
    throw new SluiceError(
      ErrorCode.InvalidConfig,
      `pipeline ${pipeline} has no input stream for shard ${shard} (neither ${shared} nor ${own})`,
    );
  }

  /**
   * Publishes every entry of `pipeline` matching `filter` again, each at most once across all
   * runs (see the top of this file), in dead-letter order.
   */
  async replay(pipeline: string, filter: DeadLetterFilter): Promise<ReplayReport> {
    const markers = (await this.markers(true))!;
    const report: ReplayReport = {
      pipeline,
      matched: 0,
      replayed: 0,
      alreadyReplayed: 0,
      duplicates: 0,
      unreplayable: [],
    };
    // Stored record (shard/source sequence) -> its first entry: a worker that dead-lettered a
    // record, crashed before its checkpoint and met it again after the dead-letter stream's
    // duplicate window wrote it twice.
    const firstEntry = new Map<string, number>();
    let batch: PlannedReplay[] = [];
    for await (const e of this.entries(pipeline, { payload: true })) {
      const stored =
        e.shard === undefined || e.sourceSeq === undefined ? undefined : `${e.shard}/${e.sourceSeq}`;
      const first = stored === undefined ? undefined : firstEntry.get(stored);
      if (stored !== undefined && first === undefined) firstEntry.set(stored, e.seq);
      if (!matchesFilter(e, filter)) continue;
      report.matched++;
      if (first !== undefined) {
        report.duplicates++;
        continue;
      }
      const plan = planReplay(e);
      if ("reason" in plan) {
        report.unreplayable.push({ seq: e.seq, reason: plan.reason });
        continue;
      }
      batch.push(plan);
      if (batch.length >= REPLAY_BATCH) {
        await this.replayBatch(pipeline, batch, markers, report);
        batch = [];
      }
    }
    if (batch.length > 0) await this.replayBatch(pipeline, batch, markers, report);
    return report;
  }

  private async replayBatch(
    pipeline: string,
    batch: PlannedReplay[],
    markers: JetStreamJsonStore<ReplayMarker>,
    report: ReplayReport,
  ): Promise<void> {
    for (const p of batch) p.stream = await this.inputStreamOf(pipeline, p.shard);
    // Read before any of these entries is claimed, so every publish that follows a claim is
    // stored above it.
    const inputSeq = new Map<string, number>();
    for (const s of new Set(batch.map((p) => p.stream!))) inputSeq.set(s, (await this.lastSeq(s))?.last ?? 0);
    const claims = await Promise.all(batch.map((p) => this.claim(markers, p, inputSeq.get(p.stream!)!)));
    const marking: Array<Promise<void>> = [];
    try {
      // One at a time, in dead-letter order: records of one key are published in the order
      // they were dead-lettered.
      for (const [i, p] of batch.entries()) {
        const claim = claims[i]!;
        if (claim.done) {
          report.alreadyReplayed++;
          continue;
        }
        const ack = await this.publish(p);
        if (ack.duplicate) report.alreadyReplayed++;
        else report.replayed++;
        marking.push(this.markDone(markers, p, ack.seq, claim.revision));
      }
    } finally {
      await Promise.allSettled(marking);
    }
    await Promise.all(marking);
  }

  /**
   * Claims `p`'s marker, or learns that an earlier run replayed it (`done`). A marker left
   * `claimed` is checked against the input stream; the revision returned is the one to set
   * `done` from.
   */
  private async claim(
    markers: JetStreamJsonStore<ReplayMarker>,
    p: PlannedReplay,
    inputSeq: number,
  ): Promise<{ done: true } | { done: false; revision: number }> {
    const key = replayMarkerKey(p.entry.pipeline, p.entry.seq);
    for (let attempt = 0; ; attempt++) {
      try {
        const revision = await markers.compareAndSet(
          key,
          {
            state: "claimed",
            inputSeq,
            stream: p.stream!,
            subject: p.storedSubject,
            msgId: p.msgId,
            recordId: p.recordId,
            at: new Date().toISOString(),
          },
          0,
        );
        return { done: false, revision };
      } catch (err) {
        if (!isSluiceError(err, ErrorCode.Conflict)) throw err;
      }
      const cur = await markers.get(key);
      // Deleted between the create and the read: claim again.
      if (cur.revision === 0 && attempt < 3) continue;
      if (cur.value?.state === "done") return { done: true };
      // Claimed by a run that did not finish, or unreadable: did its publish land?
      const c = cur.value?.state === "claimed" ? cur.value : undefined;
      const found = await this.findPublished(
        c?.stream ?? p.stream!,
        c?.subject ?? p.storedSubject,
        c?.inputSeq ?? 0,
        p.msgId,
      );
      if (found === null) return { done: false, revision: cur.revision };
      await this.markDone(markers, p, found, cur.revision);
      return { done: true };
    }
  }

  /** The sequence of the message on `subject` above `afterSeq` with `Nats-Msg-Id` `msgId`, or null. */
  private async findPublished(
    stream: string,
    subject: string,
    afterSeq: number,
    msgId: string,
  ): Promise<number | null> {
    const consumer = await this.js.consumers.get(stream, {
      filter_subjects: [subject],
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: afterSeq + 1,
      headers_only: true,
    });
    try {
      if ((await consumer.info(true)).num_pending === 0) return null;
      const it = await consumer.consume({ max_messages: 1_024 });
      try {
        for await (const m of it) {
          if (m.headers?.get(Headers.msgId) === msgId) return m.seq;
          if (m.info.pending === 0) break;
        }
      } finally {
        await it.close().catch(() => undefined);
      }
      return null;
    } finally {
      await consumer.delete().catch(() => undefined);
    }
  }

  private async publish(p: PlannedReplay): Promise<{ seq: number; duplicate: boolean }> {
    const h = natsHeaders();
    for (const [k, v] of Object.entries(p.headers)) h.set(k, v);
    try {
      return await this.js.publish(p.subject, p.entry.data, {
        headers: h,
        // Into the pipeline's input stream or nowhere.
        expect: { streamName: p.stream! },
      });
    } catch (err) {
      throw unavailable(
        `dead letter ${p.entry.seq} of ${p.entry.pipeline}: publish to ${p.subject} failed (its marker stays claimed; run the replay again, it checks whether the publish landed)`,
        err,
      );
    }
  }

  private async markDone(
    markers: JetStreamJsonStore<ReplayMarker>,
    p: PlannedReplay,
    seq: number,
    revision: number,
  ): Promise<void> {
    const key = replayMarkerKey(p.entry.pipeline, p.entry.seq);
    const done: ReplayMarker = {
      state: "done",
      seq,
      stream: p.stream!,
      msgId: p.msgId,
      recordId: p.recordId,
      at: new Date().toISOString(),
    };
    try {
      await markers.compareAndSet(key, done, revision);
    } catch (err) {
      // Another run set it first; it can only have set it `done`.
      if (!isSluiceError(err, ErrorCode.Conflict)) throw err;
    }
  }
}

/** What a replay of `e` publishes, or why it cannot be replayed. */
function planReplay(e: DeadLetterEntry): PlannedReplay | { reason: string } {
  if (!e.recordId) return { reason: "no record id (it had no Nats-Msg-Id)" };
  const subject = replaySubject(e.pipeline, e.sourceSubject);
  if (!subject || e.sourceSubject === undefined) {
    return {
      reason: `source subject ${e.sourceSubject ?? "(none)"} is not sluice.in.${e.pipeline}.<shard>.<key>`,
    };
  }
  if (!e.data) return { reason: "read without its payload" };
  return {
    entry: e,
    subject,
    storedSubject: e.sourceSubject,
    shard: Number(e.sourceSubject.split(".")[3]),
    headers: replayHeaders(e.headers, e.pipeline, e.seq, e.recordId),
    msgId: replayMsgId(e.pipeline, e.seq),
    recordId: e.recordId,
  };
}
