/**
 * What `sluice up` (and `sluice provision`, for the sinks it reaches) checks before a
 * directory's streams and a sink go to workers. A sink's checkpoints are sequences of one
 * particular stream; against any other stream (empty, or numbered from 1 again) a shard would
 * wait at the checkpoint for records that never come and count as caught up, while what the new
 * stream receives goes unwritten. Two ways to get there are refused here, each with what to do
 * instead:
 *  - starting a directory in the other security mode than its streams were made in: a plain
 *    cluster keeps its streams in NATS's global account, a secured one in account `SLUICE`, so
 *    the switch starts an empty set of streams beside the old ones;
 *  - a sink whose checkpoints lie beyond the ends of this cluster's streams: a database (or a
 *    kept `sink.db`) written by another cluster, or by this one before its store was removed.
 */
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { type JetStreamManager, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { openInspector } from "../../shared/adapters/sink/open-sinks.js";
import { SqliteSinkInspector } from "../../shared/adapters/sink/sqlite-inspector.js";
import { describeSink, type SluiceConfig, sinkOf } from "../../shared/contract/config.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import type { SinkInspector } from "../../shared/contract/ports.js";
import { inputStream } from "../../shared/contract/wire.js";

/** The NATS account holding a local cluster's streams: the global one when plain, else `SLUICE`. */
export const streamAccount = (secured: boolean): string => (secured ? "SLUICE" : "$G");

/**
 * The accounts that hold at least one stream in any node's JetStream store under `dir/nats`.
 * A folder this user may not read (a store written by a container's own user) counts as none.
 */
export function accountsWithStreams(dir: string): Set<string> {
  const found = new Set<string>();
  const entries = (path: string) => {
    try {
      return readdirSync(path, { withFileTypes: true });
    } catch {
      return [];
    }
  };
  for (const node of entries(join(dir, "nats"))) {
    if (!node.isDirectory()) continue;
    for (const account of entries(join(dir, "nats", node.name, "jetstream"))) {
      if (!account.isDirectory() || account.name === "$SYS") continue;
      if (entries(join(dir, "nats", node.name, "jetstream", account.name, "streams")).length > 0)
        found.add(account.name);
    }
  }
  return found;
}

/**
 * Refuses to start `dir` secured when its streams were made plain, or plain when they were made
 * secured (see the module comment).
 */
export function checkSecurityMode(dir: string, secured: boolean, dirArg = dir): void {
  const held = accountsWithStreams(dir);
  const other = streamAccount(!secured);
  if (!held.has(other) || held.has(streamAccount(secured))) return;
  throw new SluiceError(
    ErrorCode.InvalidConfig,
    secured
      ? `${dir} holds the streams of a cluster started with --insecure (NATS's global account); a secured cluster keeps its streams in account SLUICE and would start without them, behind the sink's checkpoints. Start it with 'sluice up --insecure --dir ${dirArg}', or start the secured cluster in a new directory.`
      : `${dir} holds the streams of a secured cluster (account SLUICE, encrypted at rest); --insecure would start without them, behind the sink's checkpoints. Start it without --insecure, or start the plain cluster in a new directory.`,
  );
}

/** A shard whose checkpoint in the sink lies past the last record of its stream. */
export interface ForeignCheckpoint {
  pipeline: string;
  shard: number;
  stream: string;
  /** The checkpoint's stream sequence. */
  checkpointSeq: number;
  /** The stream's last sequence (0: it never held a record). */
  streamLastSeq: number;
}

/**
 * The shards of `cfg`'s pipelines whose sink checkpoint is beyond their stream's last sequence.
 * A stream's last sequence never goes down while the stream lives (purges and expiry keep it),
 * and a checkpoint only ever names a record the stream stored, so this holds only for a sink
 * that was written from another stream.
 */
export async function foreignCheckpoints(
  jsm: JetStreamManager,
  cfg: SluiceConfig,
  sink: SinkInspector,
): Promise<ForeignCheckpoint[]> {
  const lastSeqs = new Map<string, Promise<number | null>>();
  const lastSeq = (stream: string): Promise<number | null> => {
    let p = lastSeqs.get(stream);
    if (!p) {
      p = jsm.streams.info(stream).then(
        (si) => si.state.last_seq,
        () => null,
      );
      lastSeqs.set(stream, p);
    }
    return p;
  };
  const found: ForeignCheckpoint[] = [];
  for (const cp of await sink.checkpoints()) {
    const p = cfg.pipelines.find((x) => x.name === cp.pipeline);
    if (!p || cp.shard >= p.shards || cp.seq <= 0) continue;
    const stream = inputStream(p, cp.shard);
    const last = await lastSeq(stream);
    if (last !== null && cp.seq > last)
      found.push({
        pipeline: cp.pipeline,
        shard: cp.shard,
        stream,
        checkpointSeq: cp.seq,
        streamLastSeq: last,
      });
  }
  return found.sort((a, b) => a.pipeline.localeCompare(b.pipeline) || a.shard - b.shard);
}

/** Which sink `foreignCheckpointsError` names: its type, and how to name it without a password. */
export interface SinkNamed {
  type: "sqlite" | "postgres" | "jetstream";
  name: string;
}

/** The error for `foreignCheckpoints`' findings, with what to do for that kind of sink. */
export function foreignCheckpointsError(found: ForeignCheckpoint[], sink: SinkNamed): SluiceError {
  const first = found[0]!;
  const more = found.length > 1 ? ` (and ${found.length - 1} more shard(s))` : "";
  const remedy =
    sink.type === "sqlite"
      ? "Move the SQLite file aside to start with an empty sink"
      : sink.type === "postgres"
        ? "Point the cluster at an empty database"
        : "Delete the pipeline's output stream to start it empty";
  return new SluiceError(
    ErrorCode.InvalidConfig,
    `the sink (${sink.name}) holds checkpoints of other streams than this cluster's: ${first.pipeline} shard ${first.shard} is committed up to sequence ${first.checkpointSeq}, but its stream ${first.stream} ends at ${first.streamLastSeq}${more}. The sink was written by another cluster, or by this one before its NATS store was removed; its shards would wait at those checkpoints while new records went unwritten. ${remedy}, or start the cluster on the NATS store that wrote the sink.`,
  );
}

/**
 * Throws `foreignCheckpointsError` when a sink of `cfg`'s pipelines is committed past the ends of
 * their streams. SQLite pipelines are checked only where their file is (`sqlitePath`): `sluice
 * up` has it, `sluice provision` on a deployment's cluster does not.
 */
export async function checkCheckpointsAgainstStreams(
  nc: NatsConnection,
  cfg: SluiceConfig,
  sqlitePath?: string,
): Promise<void> {
  const pipelines =
    sqlitePath === undefined ? cfg.pipelines.filter((p) => sinkOf(cfg, p).type !== "sqlite") : cfg.pipelines;
  if (pipelines.length === 0) return;
  const scoped: SluiceConfig = { ...cfg, pipelines };
  const inspector = openInspector(scoped, {
    sqlite: () => new SqliteSinkInspector(sqlitePath ?? ""),
    nc,
  });
  let found: ForeignCheckpoint[];
  try {
    found = await foreignCheckpoints(await jetstreamManager(nc, { timeout: 10_000 }), scoped, inspector);
  } finally {
    await inspector.close();
  }
  if (found.length === 0) return;
  const sink = sinkOf(cfg, scoped.pipelines.find((p) => p.name === found[0]!.pipeline)!);
  throw foreignCheckpointsError(found, {
    type: sink.type,
    name: sink.type === "sqlite" ? `sqlite ${sqlitePath}` : describeSink(sink),
  });
}
