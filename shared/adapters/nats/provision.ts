/**
 * Creates (idempotently) the JetStream resources of a cluster: the input streams of each
 * pipeline (one, or one per shard) and one dead-letter stream per pipeline, and the KV buckets of
 * the ownership protocol, the schema registry and dead-letter replays, and the audit stream, in
 * which it then records each pipeline's config when it differs from the last one recorded.
 */
import { DiscardPolicy, jetstreamManager, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { type NatsConnection, nanos } from "@nats-io/transport-node";
import type { AuditActor } from "../../contract/audit.js";
import { type SluiceConfig, sinkOf } from "../../contract/config.js";
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import {
  Buckets,
  deadLetterStream,
  deadLetterSubjects,
  inputStreamSubjects,
  inputStreams,
  inputStreamTransform,
  outputStream,
  outputSubjects,
} from "../../contract/wire.js";
import { auditStreamConfig, commandActor, recordConfigChanges } from "./audit-log.js";

/** Streams created at once: each is a Raft group whose creation the meta leader serialises. */
const createConcurrency = 16;

/** `who` is recorded in the audit stream with each config change (default: this command, as admin). */
export async function provision(
  nc: NatsConnection,
  cfg: SluiceConfig,
  replicas: number,
  who: AuditActor = commandActor(),
): Promise<void> {
  const jsm = await jetstreamManager(nc, { timeout: 10_000 });
  for (const p of cfg.pipelines) {
    const r = Math.min(p.replicas, replicas);
    const streams = [...inputStreams(p)];
    for (let i = 0; i < streams.length; i += createConcurrency) {
      await Promise.all(
        streams.slice(i, i + createConcurrency).map(([name, [shard]]) => {
          const transform = inputStreamTransform(p);
          return ensureStream(jsm, {
            name,
            subjects: [inputStreamSubjects(p, shard!)],
            // The shared stream stores each record under its shard (`sluice.in.P.<shard>.<key>`).
            ...(transform ? { subject_transform: transform } : {}),
            num_replicas: r,
            storage: StorageType.File,
            retention: RetentionPolicy.Limits,
            discard: DiscardPolicy.Old,
            // Publishes are deduplicated per stream: a key always maps to the same shard, so a
            // record re-sent with its Nats-Msg-Id always meets its first copy's window.
            duplicate_window: nanos(p.duplicateWindowMs),
          });
        }),
      );
    }
    const sink = sinkOf(cfg, p);
    if (sink.type === "jetstream") {
      // The output stream of `OutputStreamSink`: atomic batches carry a commit's records and its
      // checkpoint together.
      await ensureStream(jsm, {
        name: outputStream(p.name),
        subjects: [outputSubjects(p.name)],
        num_replicas: Math.min(sink.replicas, replicas),
        storage: StorageType.File,
        retention: RetentionPolicy.Limits,
        duplicate_window: nanos(p.duplicateWindowMs),
        allow_atomic: true,
      });
    }
    await ensureStream(jsm, {
      name: deadLetterStream(p.name),
      subjects: [deadLetterSubjects(p.name)],
      num_replicas: r,
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      duplicate_window: nanos(p.duplicateWindowMs),
    });
  }
  const kvm = new Kvm(nc);
  // No direct gets: those may be served by a lagging replica, and a lease check or a CAS
  // retry must read what the stream leader has.
  await kvm.create(Buckets.assignments, { replicas, history: 1, allow_direct: false });
  await kvm.create(Buckets.coordinator, { replicas, history: 1, allow_direct: false });
  await kvm.create(Buckets.schemas, { replicas, history: 1, allow_direct: false });
  // `sluice dlq replay`'s markers: a claim must see the leader's latest, like a lease.
  await kvm.create(Buckets.dlqReplays, { replicas, history: 1, allow_direct: false });
  // Operators' record of changes and fences (README "Security").
  await ensureStream(jsm, auditStreamConfig(replicas));
  await recordConfigChanges(nc, cfg, who);
}

type Jsm = Awaited<ReturnType<typeof jetstreamManager>>;

const transformText = (t: { src?: string; dest?: string } | undefined): string =>
  t ? ` (stored as ${t.dest} from ${t.src})` : "";

async function ensureStream(jsm: Jsm, cfg: Parameters<Jsm["streams"]["add"]>[0]): Promise<void> {
  let existing: { subjects: string[]; transform: string } | undefined;
  try {
    const info = (await jsm.streams.info(cfg.name!)).config;
    existing = { subjects: info.subjects ?? [], transform: transformText(info.subject_transform) };
  } catch {
    // Not there yet: create it below.
  }
  if (existing) {
    const wanted = { subjects: cfg.subjects ?? [], transform: transformText(cfg.subject_transform) };
    const same =
      existing.subjects.length === wanted.subjects.length &&
      existing.subjects.every((s, i) => s === wanted.subjects[i]) &&
      existing.transform === wanted.transform;
    if (same) return;
    // A stream of another layout (an older sluice's literal shard subjects, another shard
    // count) holds records no shard consumer of this one would deliver where it looks: refuse
    // rather than skip them.
    throw new SluiceError(
      ErrorCode.InvalidConfig,
      `stream ${cfg.name} captures ${existing.subjects.join(", ")}${existing.transform}, not ${wanted.subjects.join(", ")}${wanted.transform}: it was made for another subject layout or shard count; read it to the end with the sluice that wrote it, then delete it`,
    );
  }
  try {
    await jsm.streams.add(cfg);
  } catch (cause) {
    const overlap = /overlap/i.test((cause as Error).message);
    throw new SluiceError(
      overlap ? ErrorCode.InvalidConfig : ErrorCode.Unavailable,
      overlap
        ? `stream ${cfg.name} cannot take ${cfg.subjects?.join(", ")}: another stream captures those subjects (a pipeline's stream layout cannot change while its streams exist)`
        : `cannot create stream ${cfg.name}: ${(cause as Error).message}`,
      { cause, retryable: !overlap },
    );
  }
}
