/**
 * The wire contract: subject, stream, consumer and bucket names. Other tools depend on
 * these exactly; change them only with a migration.
 */

/**
 * Producers publish here, with the key also in the `Sluice-Key` header; the server maps the key
 * token to a shard.
 */
export const ingestSubject = (pipeline: string, key: string): string => `ingest.${pipeline}.${key}`;
/**
 * Where a shard's records land after partitioning: one literal subject per shard. The key is not
 * in it: it travels in the `Sluice-Key` header. On nats-server 2.9 a consumer filtered on a
 * literal subject skips other shards' records with one string comparison each, where a wildcard
 * filter (`sluice.in.P.<shard>.>`) tokenises every record's subject, and a stream holding one
 * subject per key keeps per-subject state for every key; measured here, a literal layout reads
 * about twice as fast through 16 filtered consumers and takes publishes about a third faster.
 */
export const shardSubject = (pipeline: string, shard: number): string => `sluice.in.${pipeline}.${shard}`;
/** The subject of one shard's records, as a consumer filter: literal (see `shardSubject`). */
export const shardFilter = shardSubject;
export const deadLetterSubject = (pipeline: string, shard: number): string =>
  `sluice.dlq.${pipeline}.${shard}`;
export const deadLetterSubjects = (pipeline: string): string => `sluice.dlq.${pipeline}.>`;

/**
 * How a pipeline stores its records (`PipelineConfig.streams`):
 * - `shared`: one stream for all shards; each shard's consumer filters on its subject. On
 *   nats-server 2.9 a filtered consumer steps over the other shards' records one by one, so
 *   the servers look at every record once per shard (a string comparison each, see
 *   `shardSubject`).
 * - `per-shard`: one stream per shard, like a Kafka partition's log; a shard's consumer reads
 *   its own stream unfiltered, and the streams' leaders spread over the servers, but there are
 *   as many Raft groups as shards, so a fault that cuts a node off hits the stream leaders on
 *   that node at once (see README, "A stream whose history changed").
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
/** The subjects an input stream captures: the pipeline's, or the shard's. */
export const inputStreamSubjects = (p: PipelineStreams, shard: number): string =>
  p.streams === "per-shard" ? shardSubject(p.name, shard) : `sluice.in.${p.name}.*`;
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

/** The server-side partition mapping of a pipeline, as in the nats-server `mappings` block. */
export const partitionMapping = (pipeline: string, shards: number): [string, string] => [
  `ingest.${pipeline}.*`,
  `sluice.in.${pipeline}.{{partition(${shards},1)}}`,
];

export const Buckets = {
  /** shardKey -> AssignmentEntry (JSON). */
  assignments: "sluice_assignments",
  /** `leader` -> LeaderRecord; `view` -> the leader's cluster view (status). */
  coordinator: "sluice_coordinator",
} as const;

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
  /** The inspector's reads (`SinkInspector`): every checkpoint, a row count, rows. */
  checkpoints: "sluice.sink.inspect.checkpoints",
  rowCount: "sluice.sink.inspect.row-count",
  rows: "sluice.sink.inspect.rows",
} as const;

export const Headers = {
  msgId: "Nats-Msg-Id",
  /**
   * The record's key, as in its `ingest.P.<key>` subject (one subject token): the shard subject
   * does not hold it. A record without it is dead-lettered (`MISSING_KEY`), one whose key
   * belongs to another shard too (`KEY_SHARD_MISMATCH`).
   */
  key: "Sluice-Key",
  contentType: "Content-Type",
  errorCode: "Sluice-Error-Code",
  errorMessage: "Sluice-Error",
  /** The stage that rejected a dead-lettered record. */
  errorStage: "Sluice-Error-Stage",
  /** A dead letter's original `Nats-Msg-Id` (its own id is `dlq-<shard>-<seq>`). */
  originalMsgId: "Sluice-Original-Msg-Id",
  sourceSeq: "Sluice-Source-Seq",
  sourceSubject: "Sluice-Source-Subject",
  shard: "Sluice-Shard",
} as const;

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
