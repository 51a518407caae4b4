/**
 * The wire contract: subject, stream, consumer and bucket names. Other tools depend on
 * these exactly; change them only with a migration.
 */

/** Producers publish here; the server maps the key token to a shard. */
export const ingestSubject = (pipeline: string, key: string): string => `ingest.${pipeline}.${key}`;
/** Where records land after partitioning; the shard's stream captures `sluice.in.<P>.<shard>.>`. */
export const shardSubject = (pipeline: string, shard: number, key: string): string =>
  `sluice.in.${pipeline}.${shard}.${key}`;
/** The subjects of one shard's records: all its stream holds. */
export const shardFilter = (pipeline: string, shard: number): string => `sluice.in.${pipeline}.${shard}.>`;
export const deadLetterSubject = (pipeline: string, shard: number): string =>
  `sluice.dlq.${pipeline}.${shard}`;
export const deadLetterSubjects = (pipeline: string): string => `sluice.dlq.${pipeline}.>`;

/**
 * The input stream of one shard. Every shard has its own stream, as every Kafka partition has
 * its own log: a consumer of one shard then reads only that shard's records. Over one shared
 * stream, each shard's filtered consumer would scan past every other shard's records (on
 * nats-server 2.9 a wildcard filter is matched message by message), so the server would read
 * each record once per shard.
 */
export const inputStream = (pipeline: string, shard: number): string => `SLUICE_IN_${pipeline}_${shard}`;
/** The input streams of a pipeline, by shard. */
export const inputStreams = (pipeline: string, shards: number): string[] =>
  Array.from({ length: shards }, (_, shard) => inputStream(pipeline, shard));
export const deadLetterStream = (pipeline: string): string => `SLUICE_DLQ_${pipeline}`;
/** The durable consumer of one shard at one epoch. Every epoch has its own. */
export const consumerName = (pipeline: string, shard: number, epoch: number): string =>
  `${pipeline}-s${shard}-e${epoch}`;
export const consumerPrefix = (pipeline: string, shard: number): string => `${pipeline}-s${shard}-e`;

/** The server-side partition mapping of a pipeline, as in the nats-server `mappings` block. */
export const partitionMapping = (pipeline: string, shards: number): [string, string] => [
  `ingest.${pipeline}.*`,
  `sluice.in.${pipeline}.{{partition(${shards},1)}}.{{wildcard(1)}}`,
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
} as const;

export const Headers = {
  msgId: "Nats-Msg-Id",
  contentType: "Content-Type",
  errorCode: "Sluice-Error-Code",
  errorMessage: "Sluice-Error",
  sourceSeq: "Sluice-Source-Seq",
  sourceSubject: "Sluice-Source-Subject",
  shard: "Sluice-Shard",
} as const;

/** FNV-1a 32-bit hash, as nats-server's `partition()` mapping computes it over the key token. */
export function fnv1a32(input: string): number {
  return fnv1a32Bytes(new TextEncoder().encode(input));
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
