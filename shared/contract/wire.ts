/**
 * The wire contract: subject, stream, consumer and bucket names. Other tools depend on
 * these exactly; change them only with a migration.
 */

/**
 * Producers publish here: any NATS client, a record per message, the key as the last subject
 * token, `Nats-Msg-Id` its record id. No sluice header is needed.
 */
export const ingestSubject = (pipeline: string, key: string): string => `ingest.${pipeline}.${key}`;
/** Every key of a pipeline: what its producers may publish to. */
export const ingestSubjects = (pipeline: string): string => `ingest.${pipeline}.*`;
/**
 * Where a record is stored: `sluice.in.P.<shard>.<key>`, the shard being FNV-1a-32 of the key
 * mod the shard count (`shardOf`). The key stays in the subject, so a record carries it from
 * any producer, and its shard is one subject token a consumer filters on.
 */
export const shardSubject = (pipeline: string, shard: number, key: string): string =>
  `sluice.in.${pipeline}.${shard}.${key}`;
/** Every record of one shard, as a consumer filter. */
export const shardFilter = (pipeline: string, shard: number): string => `sluice.in.${pipeline}.${shard}.*`;
/** Whether `subject` matches `filter` by NATS rules: `*` is one token, a final `>` one or more. */
export function subjectMatches(filter: string, subject: string): boolean {
  const f = filter.split(".");
  const t = subject.split(".");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === ">") return i === f.length - 1 && t.length > i;
    if (i >= t.length || (f[i] !== "*" && f[i] !== t[i])) return false;
  }
  return f.length === t.length;
}

/** The key of a record stored at `subject` (its last token). */
export const keyOfSubject = (subject: string): string => subject.slice(subject.lastIndexOf(".") + 1);
/** What the server computes the stored subject from an ingest subject with, as a transform's destination. */
export const partitionDestination = (pipeline: string, shards: number): string =>
  `sluice.in.${pipeline}.{{partition(${shards},1)}}.{{wildcard(1)}}`;
export const deadLetterSubject = (pipeline: string, shard: number): string =>
  `sluice.dlq.${pipeline}.${shard}`;
export const deadLetterSubjects = (pipeline: string): string => `sluice.dlq.${pipeline}.>`;

/**
 * How a pipeline stores its records (`PipelineConfig.streams`):
 * - `shared`: one stream for all shards. It captures the ingest subjects and its own subject
 *   transform stores each record under its shard (`partitionDestination`); each shard's consumer
 *   filters on its shard's token. Nothing outside the stream's config is needed.
 * - `per-shard`: one stream per shard, like a Kafka partition's log, read unfiltered; its
 *   leaders spread over the servers, at one Raft group per shard. A stream cannot pick one
 *   shard's records out of the ingest subjects, so the servers' account `mappings` partition them
 *   (`partitionMapping`), and a producer's publish permission must cover the mapped subjects.
 */
export type StreamLayout = "shared" | "per-shard";

/** What names a pipeline's input streams. */
export interface PipelineStreams {
  name: string;
  streams: StreamLayout;
}

/** The input stream that holds a shard's records. */
export const inputStream = (p: PipelineStreams, shard: number): string =>
  p.streams === "per-shard" ? `SLUICE_IN_${p.name}_${shard}` : `SLUICE_IN_${p.name}`;
/** The subjects an input stream captures: the pipeline's ingest subjects, or the shard's. */
export const inputStreamSubjects = (p: PipelineStreams, shard: number): string =>
  p.streams === "per-shard" ? shardFilter(p.name, shard) : ingestSubjects(p.name);
/** The subject transform of a shared input stream (none for a shard's own stream). */
export const inputStreamTransform = (
  p: PipelineStreams & { shards: number },
): { src: string; dest: string } | undefined =>
  p.streams === "per-shard"
    ? undefined
    : { src: ingestSubjects(p.name), dest: partitionDestination(p.name, p.shards) };
/** A shard consumer's filter; none on a shard's own stream, where it would only cost matching. */
export const shardConsumerFilter = (p: PipelineStreams, shard: number): string | undefined =>
  p.streams === "per-shard" ? undefined : shardFilter(p.name, shard);
/** The pipeline's input streams, each once, with the shards each holds. */
export function inputStreams(p: PipelineStreams & { shards: number }): Map<string, number[]> {
  const out = new Map<string, number[]>();
  for (let shard = 0; shard < p.shards; shard++) {
    const s = inputStream(p, shard);
    const shards = out.get(s);
    if (shards) shards.push(shard);
    else out.set(s, [shard]);
  }
  return out;
}
export const deadLetterStream = (pipeline: string): string => `SLUICE_DLQ_${pipeline}`;
/** The server's advisory of a stream's new leader (`*`: every stream's), which workers follow. */
export const streamLeaderElected = (stream: string): string =>
  `$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.${stream}`;

/** The output stream of a pipeline whose sink is `jetstream` (see `OutputStreamSink`). */
export const outputStream = (pipeline: string): string => `SLUICE_OUT_${pipeline}`;
/** Every subject of a pipeline's output stream. */
export const outputSubjects = (pipeline: string): string => `sluice.out.${pipeline}.>`;
/** A shard's records in the output stream, one message each (`sluice.out.P.*` reads them all). */
export const outputDataSubject = (pipeline: string, shard: number): string =>
  `sluice.out.${pipeline}.${shard}`;
/** A shard's checkpoint messages in the output stream; the newest is its checkpoint. */
export const outputCheckpointSubject = (pipeline: string, shard: number): string =>
  `sluice.out.${pipeline}.${shard}.cp`;
/**
 * The durable consumer of one shard at one epoch. Every epoch has its own. `candidate` > 0
 * names the further consumers created at once to land one on the stream leader (see
 * `JetStreamShardSource.open`); the epoch keeps one of them.
 */
export const consumerName = (pipeline: string, shard: number, epoch: number, candidate = 0): string =>
  candidate === 0 ? `${pipeline}-s${shard}-e${epoch}` : `${pipeline}-s${shard}-e${epoch}-c${candidate}`;
export const consumerPrefix = (pipeline: string, shard: number): string => `${pipeline}-s${shard}-e`;
/** Candidates an epoch's consumer may be (`consumerName`'s `candidate` is below this). */
export const CONSUMER_CANDIDATES = 12;
/** The epoch of `name` when it is a consumer of this shard (`consumerName`), else null. */
export function consumerEpoch(pipeline: string, shard: number, name: string): number | null {
  const prefix = consumerPrefix(pipeline, shard);
  if (!name.startsWith(prefix)) return null;
  const m = /^(\d+)(?:-c\d+)?$/.exec(name.slice(prefix.length));
  return m ? Number(m[1]) : null;
}
/** The consumer of a shard's epoch among `byName` (whichever candidate it is), with its name. */
export function epochConsumer<T>(
  byName: ReadonlyMap<string, T> | undefined,
  pipeline: string,
  shard: number,
  epoch: number,
): { name: string; value: T } | undefined {
  if (!byName) return undefined;
  for (let c = 0; c < CONSUMER_CANDIDATES; c++) {
    const name = consumerName(pipeline, shard, epoch, c);
    const value = byName.get(name);
    if (value !== undefined) return { name, value };
  }
  return undefined;
}

/**
 * The account mapping a `per-shard` pipeline needs on the servers (the nats-server `mappings`
 * block): it partitions the ingest subjects before any stream sees them.
 */
export const partitionMapping = (pipeline: string, shards: number): [string, string] => [
  ingestSubjects(pipeline),
  partitionDestination(pipeline, shards),
];

export const Buckets = {
  /** shardKey -> AssignmentEntry (JSON). */
  assignments: "sluice_assignments",
  /** `leader` -> LeaderRecord; `view` -> the leader's cluster view (status). */
  coordinator: "sluice_coordinator",
  /** The schema registry: `subject.<S>`, `id.<N>`, `ids`, `subjects` (see `pipeline/schema-registry.ts`). */
  schemas: "sluice_schemas",
  /**
   * `sluice dlq replay`'s marker per dead letter, key `<P>.<dlqSeq>`: `{state: "claimed",
   * inputSeq, ...}` before its publish, `{state: "done", seq, ...}` after it (see
   * `adapters/nats/dead-letter-store.ts`). Never deleted by sluice: it is what keeps a replay
   * from publishing an entry twice beyond the input stream's duplicate window.
   */
  dlqReplays: "sluice_dlq_replays",
} as const;

/**
 * The KV bucket of reference table `table` (README "Enrichment"): JSON values keyed by the lookup
 * value. Its stream is `KV_<bucket>`, a revision is a sequence of that stream.
 */
export const refBucket = (table: string): string => `sluice_ref_${table}`;

/**
 * The audit stream (README "Security"): one JSON entry (`AuditEntry`, `contract/audit.ts`) per
 * config, schema or reference-data change and per sink fence, on `sluice.audit.<kind>.<target…>`.
 */
export const AUDIT_STREAM = "SLUICE_AUDIT";
/** What the audit stream records, each kind under its own subject token. */
export const AuditKinds = ["config", "schema", "ref", "fence"] as const;
export type AuditKind = (typeof AuditKinds)[number];
/** Every audit subject: what the stream captures. */
export const AUDIT_SUBJECTS = "sluice.audit.>";
/** Every audit subject of one kind (a reader's filter; a writer's permission). */
export const auditKindSubjects = (kind: AuditKind): string => `sluice.audit.${kind}.>`;
/**
 * Where an entry is stored: config `<pipeline>`, schema `<subject>`, ref `<table>`, fence
 * `<pipeline>.<shard>` (each name is one subject token, as the config and registry require), so
 * the last entry of one target is a last-by-subject read.
 */
export const auditSubject = (kind: AuditKind, ...target: (string | number)[]): string =>
  `sluice.audit.${kind}.${target.join(".")}`;

export const ControlSubjects = {
  /** Worker heartbeats (request; the leader replies with the worker's grants). */
  heartbeat: "sluice.ctl.heartbeat",
  /** A worker's report that it released a shard after a graceful hand-off. */
  released: "sluice.ctl.released",
  /** The leader's announcement of an assignment write it has just made (`AssignedNotice`). */
  assigned: "sluice.ctl.assigned",
} as const;

/** Requests to the SQLite sink process (`NatsSinkServer`); CBOR bodies, typed error replies. */
export const SinkSubjects = {
  fence: "sluice.sink.fence",
  commit: "sluice.sink.commit",
  checkpoint: "sluice.sink.checkpoint",
  recordIds: "sluice.sink.record-ids",
  /** The inspector's reads (`SinkInspector`): every checkpoint, a row count, rows, audit rows. */
  checkpoints: "sluice.sink.inspect.checkpoints",
  rowCount: "sluice.sink.inspect.row-count",
  rows: "sluice.sink.inspect.rows",
  batches: "sluice.sink.inspect.batches",
  lateRecords: "sluice.sink.inspect.late-records",
  mergeRows: "sluice.sink.inspect.merge-rows",
} as const;

export const Headers = {
  msgId: "Nats-Msg-Id",
  /**
   * Optional: the key to store for a record, when it is not the subject's key token (a key a
   * subject token cannot carry, say). It must belong to the same shard as the subject's key,
   * whose order that shard keeps; a record whose `Sluice-Key` belongs to another shard is
   * dead-lettered (`KEY_SHARD_MISMATCH`).
   */
  key: "Sluice-Key",
  contentType: "Content-Type",
  /**
   * Optional: the global id of the schema the record was written with (`sluice schema list`).
   * The record is validated against it, then resolved to the pipeline's pinned version.
   */
  schemaId: "Sluice-Schema-Id",
  errorCode: "Sluice-Error-Code",
  errorMessage: "Sluice-Error",
  /** The stage that rejected a dead-lettered record. */
  errorStage: "Sluice-Error-Stage",
  /** A dead letter's original `Nats-Msg-Id` (its own id is `dlq-<shard>-<seq>`). */
  originalMsgId: "Sluice-Original-Msg-Id",
  /**
   * The record id of a replayed dead letter, read instead of `Nats-Msg-Id` on a record whose
   * `Nats-Msg-Id` starts with `replay-` (`REPLAY_MSG_ID_PREFIX`). A replay cannot reuse the
   * original `Nats-Msg-Id`: the input stream holds the original message under it, so within the
   * duplicate window the replay would be dropped as a duplicate. On any other record it is
   * ignored.
   */
  recordId: "Sluice-Record-Id",
  sourceSeq: "Sluice-Source-Seq",
  /** An output record's epoch and worker: who committed it (see `OutputStreamSink`). */
  epoch: "Sluice-Epoch",
  worker: "Sluice-Worker",
  sourceSubject: "Sluice-Source-Subject",
  shard: "Sluice-Shard",
  /** An output record's lineage as JSON, `{"<table>": <revision>}` (`SinkRow.lineage`); absent: none. */
  lineage: "Sluice-Lineage",
} as const;

/** Where a record's `Nats-Msg-Id` says its id is in `Sluice-Record-Id` (`Headers.recordId`). */
export const REPLAY_MSG_ID_PREFIX = "replay-";
/**
 * The `Nats-Msg-Id` with which `sluice dlq replay` publishes the dead letter at sequence `dlqSeq`
 * of pipeline `P`'s dead-letter stream: one id per entry, so publishes of the same entry within
 * the duplicate window are stored once, and a scan of the input stream finds an earlier one.
 */
export const replayMsgId = (pipeline: string, dlqSeq: number): string =>
  `${REPLAY_MSG_ID_PREFIX}${pipeline}-${dlqSeq}`;

/** FNV-1a 32-bit hash, as nats-server's `partition()` mapping computes it over the key token. */
export function fnv1a32(input: string): number {
  // Hashed once per record read (the key check): ASCII, the common case, needs no encoding.
  let h = 0x811c9dc5;
  for (let i = 0; i < input.length; i++) {
    const c = input.charCodeAt(i);
    if (c > 127) return fnv1a32Bytes(new TextEncoder().encode(input));
    h ^= c;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** FNV-1a 32-bit over raw bytes. */
export function fnv1a32Bytes(bytes: Uint8Array): number {
  let h = 0x811c9dc5;
  for (const b of bytes) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

export const shardOf = (key: string, shards: number): number => fnv1a32(key) % shards;
