/**
 * The first stage of every pipeline: a source message becomes a `PipelineRecord` (its id, its
 * key, its decoded value), or is rejected with the reason. The decoded value flows on to the
 * later stages and the sink; nothing decodes the record's bytes again.
 */
import { decodePayload, headerOf, jsonContentType, type Rejection } from "../../contract/codec.js";
import { ErrorCode } from "../../contract/errors.js";
import type { SourceMessage } from "../../contract/ports.js";
import { Headers, keyOfSubject, REPLAY_MSG_ID_PREFIX, shardOf } from "../../contract/wire.js";
import {
  keep,
  type PipelineRecord,
  reject,
  type Stage,
  type StageContext,
  type StageDecision,
} from "../stage.js";

/** Where a record was read: its key must map there (`shardOf`), as the partition mapping does. */
export interface ReadShard {
  shard: number;
  /** The pipeline's shard count. */
  shards: number;
}

/** A record without header `name`, saying why when its header block could not be read. */
function missingHeader(msg: SourceMessage, code: ErrorCode, name: string): Rejection {
  const why = msg.headerError;
  return {
    ok: false,
    code,
    message: why === undefined ? `no ${name} header` : `header block unreadable (${why}): no ${name}`,
  };
}

/**
 * A record's id: its `Nats-Msg-Id`, or, on a replayed dead letter (`Nats-Msg-Id`
 * `replay-<P>-<dlqSeq>`), its original id from `Sluice-Record-Id`. Only a replay may carry an id
 * other than its message id, so a producer's stray header changes nothing.
 */
function recordIdOf(msg: SourceMessage): string | undefined {
  const msgId = headerOf(msg, Headers.msgId)?.trim();
  if (!msgId?.startsWith(REPLAY_MSG_ID_PREFIX)) return msgId;
  return headerOf(msg, Headers.recordId)?.trim() || msgId;
}

/**
 * The record `msg` holds, or why it holds none. Its key is its subject's last token (the key it
 * was published under, `ingest.P.<key>`), or its `Sluice-Key` header when it has one. With
 * `at`, a record whose key belongs to another shard is rejected: committing it would break the
 * order of that key's records, which one shard keeps.
 */
export function decodeRecord(
  msg: SourceMessage,
  at?: ReadShard,
): { ok: true; record: PipelineRecord } | Rejection {
  const recordId = recordIdOf(msg);
  if (!recordId) return missingHeader(msg, ErrorCode.MissingId, Headers.msgId);
  const subjectKey = keyOfSubject(msg.subject);
  const headerKey = headerOf(msg, Headers.key);
  const key = headerKey || subjectKey;
  if (!key)
    return {
      ok: false,
      code: ErrorCode.MissingKey,
      message: `no key: subject ${msg.subject} has none, nor a ${Headers.key} header`,
    };
  if (at) {
    const keyShard = shardOf(key, at.shards);
    if (keyShard !== at.shard || (headerKey && shardOf(subjectKey, at.shards) !== at.shard)) {
      return {
        ok: false,
        code: ErrorCode.KeyShardMismatch,
        message: `key '${key}' belongs to shard ${keyShard}, not ${at.shard}: publish to ingest.<pipeline>.<key>${headerKey ? `, and a ${Headers.key} header only with a key of the same shard` : ""}`,
      };
    }
  }
  const contentType = headerOf(msg, Headers.contentType);
  const payload = decodePayload(msg.data, contentType !== undefined && jsonContentType.test(contentType));
  if (!payload.ok) return payload;
  return { ok: true, record: { recordId, key, sourceSeq: msg.seq, value: payload.value, message: msg } };
}

export const decodeStage: Stage<SourceMessage, PipelineRecord> = {
  name: "decode",
  process(batch: readonly SourceMessage[], ctx: StageContext): StageDecision<PipelineRecord>[] {
    const at = ctx.shards === undefined ? undefined : { shard: ctx.ref.shard, shards: ctx.shards };
    return batch.map((m) => {
      const r = decodeRecord(m, at);
      return r.ok ? keep(r.record) : reject(r);
    });
  },
};
