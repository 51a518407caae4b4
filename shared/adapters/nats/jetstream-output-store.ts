/**
 * The output stream of the JetStream output sink (`OutputStreamSink`) on JetStream: stream
 * `SLUICE_OUT_P` with atomic batch publish on; per shard, records on `sluice.out.P.<shard>`
 * (one message each: `Nats-Msg-Id` its record id, the value as JSON, the key, source sequence,
 * epoch and worker in headers) and checkpoints on `sluice.out.P.<shard>.cp` (JSON).
 *
 * A commit is one atomic batch: its first record carries `Nats-Expected-Last-Subject-Sequence`
 * for the checkpoint subject, and its last message is the new checkpoint, so the records and the
 * checkpoint are stored together, and only if no other writer moved the checkpoint meanwhile.
 */
import {
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
  PubHeaders,
} from "@nats-io/jetstream";
import {
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  headers as natsHeaders,
  nuid,
} from "@nats-io/transport-node";
import { payloadJson } from "../../contract/codec.js";
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import type { ShardRef } from "../../contract/ownership.js";
import type { Checkpoint, OutputCheckpoint, OutputRecord, OutputStreamStore } from "../../contract/ports.js";
import { Headers, outputCheckpointSubject, outputDataSubject, outputStream } from "../../contract/wire.js";
import { apiCode } from "./jetstream-errors.js";

/** The server's answer when a conditional write found the checkpoint subject moved. */
const WRONG_LAST_SEQUENCE = new Set([10071, 10164]);
/** An atomic batch held a record id the stream already has (within its duplicate window). */
const BATCH_DUPLICATE = 10201;

const enc = new TextEncoder();
const dec = new TextDecoder();

interface BatchMessage {
  subject: string;
  data: Uint8Array;
  headers: MsgHdrs;
}

type PublishReply =
  | { ok: true; seq: number }
  | { ok: false; code: number; description: string; seq?: number };

/** A PubAck or a JetStream error, from a publish request's reply. */
function parseReply(m: Msg): PublishReply {
  if (m.headers?.hasError) return { ok: false, code: m.headers.code, description: m.headers.description };
  const r = JSON.parse(dec.decode(m.data)) as {
    seq?: number;
    error?: { err_code?: number; code?: number; description?: string };
  };
  if (r.error)
    return {
      ok: false,
      code: r.error.err_code ?? r.error.code ?? 0,
      description: r.error.description ?? "error",
      ...(typeof r.seq === "number" ? { seq: r.seq } : {}),
    };
  return { ok: true, seq: r.seq ?? 0 };
}

function recordHeaders(r: OutputRecord, shard: number): MsgHdrs {
  const h = natsHeaders();
  h.set(Headers.msgId, r.row.recordId);
  h.set(Headers.key, r.row.key);
  h.set(Headers.contentType, "application/json");
  h.set(Headers.sourceSeq, String(r.row.sourceSeq));
  h.set(Headers.shard, String(shard));
  h.set(Headers.epoch, String(r.epoch));
  h.set(Headers.worker, r.worker);
  if (r.row.lineage !== undefined) h.set(Headers.lineage, JSON.stringify(r.row.lineage));
  return h;
}

export class JetStreamOutputStore implements OutputStreamStore {
  private readonly js: JetStreamClient;
  private jsm: JetStreamManager | undefined;

  constructor(
    private readonly nc: NatsConnection,
    /** Per-request timeout, ms. */
    private readonly timeoutMs = 5_000,
  ) {
    this.js = jetstream(nc, { timeout: timeoutMs });
  }

  private async manager(): Promise<JetStreamManager> {
    this.jsm ??= await jetstreamManager(this.nc, { timeout: this.timeoutMs, checkAPI: false });
    return this.jsm;
  }

  async lastCheckpoint(ref: ShardRef): Promise<{ checkpoint: Checkpoint; streamSeq: number } | null> {
    const jsm = await this.manager();
    const m = await jsm.streams
      .getMessage(outputStream(ref.pipeline), {
        last_by_subj: outputCheckpointSubject(ref.pipeline, ref.shard),
      })
      .catch((err: unknown) => {
        // No checkpoint message yet: the shard has never been fenced here.
        if (apiCode(err) === 10037) return null;
        throw err;
      });
    if (!m) return null;
    const cp = JSON.parse(dec.decode(m.data)) as OutputCheckpoint;
    const checkpoint: Checkpoint = {
      epoch: cp.epoch,
      seq: cp.seq,
      ...(cp.fingerprint === undefined ? {} : { fingerprint: cp.fingerprint }),
      ...(cp.state === undefined ? {} : { state: cp.state }),
    };
    return { checkpoint, streamSeq: m.seq };
  }

  async append(
    ref: ShardRef,
    records: readonly OutputRecord[],
    cp: OutputCheckpoint,
    expectAt: number | undefined,
  ): Promise<{ ok: true; checkpointSeq: number } | { ok: false }> {
    const cpSubject = outputCheckpointSubject(ref.pipeline, ref.shard);
    const data = outputDataSubject(ref.pipeline, ref.shard);
    const cpData = enc.encode(JSON.stringify(cp));
    let pending = [...records];
    for (;;) {
      const messages: BatchMessage[] = pending.map((r) => ({
        subject: data,
        data: enc.encode(payloadJson(r.row.value)),
        headers: recordHeaders(r, ref.shard),
      }));
      messages.push({ subject: cpSubject, data: cpData, headers: natsHeaders() });
      // The condition rides on the first message: the checkpoint subject must not have moved.
      if (expectAt !== undefined) {
        const h = messages[0]!.headers;
        h.set(PubHeaders.ExpectedLastSubjectSequenceHdr, String(expectAt));
        if (messages.length > 1) h.set(PubHeaders.ExpectedLastSubjectSequenceSubjectHdr, cpSubject);
      }
      const r =
        messages.length === 1 ? await this.publishOne(messages[0]!) : await this.publishAtomic(messages);
      if (r.ok) return { ok: true, checkpointSeq: r.seq };
      if (WRONG_LAST_SEQUENCE.has(r.code)) return { ok: false };
      if (r.code === BATCH_DUPLICATE && pending.length > 0) {
        // A record id the stream already holds (a producer's re-send that reached the input
        // twice, beyond its duplicate window): it is in the output once; write the rest.
        const dup = await this.duplicateIn(ref, r.seq, pending);
        if (dup !== null) {
          pending = pending.filter((x) => x.row.recordId !== dup);
          continue;
        }
      }
      throw new SluiceError(
        ErrorCode.Unavailable,
        `output stream refused a write: ${r.description} (${r.code})`,
        {
          retryable: true,
        },
      );
    }
  }

  /** One message, as a request: its PubAck, or the server's error. */
  private async publishOne(m: BatchMessage): Promise<PublishReply> {
    return parseReply(await this.request(m.subject, m.data, m.headers));
  }

  /**
   * JetStream's atomic batch publish (nats-server 2.12): the first message is a request the
   * server answers once it staged it, the middle ones plain publishes, the last a request with
   * `Nats-Batch-Commit` that stores them all or none. Written out rather than through nats.js's
   * batch helper, which drops the server's error code when a batch is refused.
   */
  private async publishAtomic(messages: BatchMessage[]): Promise<PublishReply> {
    const id = nuid.next();
    const stamp = (h: MsgHdrs, n: number): MsgHdrs => {
      h.set("Nats-Batch-Id", id);
      h.set("Nats-Batch-Sequence", String(n));
      return h;
    };
    const first = messages[0]!;
    const staged = await this.request(first.subject, first.data, stamp(first.headers, 1));
    if (staged.data.length > 0) {
      const r = parseReply(staged);
      if (!r.ok) return r;
    }
    for (let i = 1; i < messages.length - 1; i++) {
      const m = messages[i]!;
      this.nc.publish(m.subject, m.data, { headers: stamp(m.headers, i + 1) });
    }
    const last = messages[messages.length - 1]!;
    const h = stamp(last.headers, messages.length);
    h.set("Nats-Batch-Commit", "1");
    return parseReply(await this.request(last.subject, last.data, h));
  }

  private async request(subject: string, data: Uint8Array, headers: MsgHdrs): Promise<Msg> {
    try {
      return await this.nc.request(subject, data, { headers, timeout: this.timeoutMs });
    } catch (err) {
      throw new SluiceError(
        ErrorCode.Unavailable,
        `output stream did not answer: ${(err as Error).message}`,
        {
          retryable: true,
          cause: err,
        },
      );
    }
  }

  /** The record id the server named as a duplicate (by the sequence of its stored copy). */
  private async duplicateIn(
    ref: ShardRef,
    err: unknown,
    pending: readonly OutputRecord[],
  ): Promise<string | null> {
    const seq = (err as { api_error?: { seq?: number } })?.api_error?.seq ?? (err as { seq?: number })?.seq;
    if (typeof seq !== "number" || seq <= 0) return null;
    const jsm = await this.manager();
    const stored = await jsm.streams.getMessage(outputStream(ref.pipeline), { seq }).catch(() => null);
    const id = stored?.header.get(Headers.msgId);
    return id && pending.some((r) => r.row.recordId === id) ? id : null;
  }

  async recordIds(ref: ShardRef, fromSeq: number): Promise<string[]> {
    const js = this.js;
    const consumer = await js.consumers.get(outputStream(ref.pipeline), {
      filter_subjects: [outputDataSubject(ref.pipeline, ref.shard)],
      deliver_policy: DeliverPolicy.All,
      headers_only: true,
    });
    const jsm = await this.manager();
    const info = await jsm.streams.info(outputStream(ref.pipeline), {
      subjects_filter: outputDataSubject(ref.pipeline, ref.shard),
    });
    const total = info.state.subjects?.[outputDataSubject(ref.pipeline, ref.shard)] ?? 0;
    const ids: string[] = [];
    if (total === 0) return ids;
    const it = await consumer.consume({ max_messages: 1_000 });
    let seen = 0;
    for await (const m of it) {
      if (Number(m.headers?.get(Headers.sourceSeq)) >= fromSeq) ids.push(m.headers?.get(Headers.msgId) ?? "");
      if (++seen >= total) break;
    }
    await it.close().catch(() => undefined);
    return ids;
  }
}
