/**
 * Creates (idempotently) the JetStream resources of a cluster: one input stream and one
 * dead-letter stream per pipeline, and the KV buckets of the ownership protocol.
 */
import { DiscardPolicy, jetstreamManager, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { type NatsConnection, nanos } from "@nats-io/transport-node";
import type { SluiceConfig } from "../config.js";
import { Buckets, deadLetterStream, deadLetterSubjects, inputStream, inputSubjects } from "../wire.js";

export async function provision(nc: NatsConnection, cfg: SluiceConfig, replicas: number): Promise<void> {
  const jsm = await jetstreamManager(nc, { timeout: 10_000 });
  for (const p of cfg.pipelines) {
    const r = Math.min(p.replicas, replicas);
    await ensureStream(jsm, {
      name: inputStream(p.name),
      subjects: [inputSubjects(p.name)],
      num_replicas: r,
      storage: StorageType.File,
      retention: RetentionPolicy.Limits,
      discard: DiscardPolicy.Old,
      duplicate_window: nanos(p.duplicateWindowMs),
    });
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
}

type Jsm = Awaited<ReturnType<typeof jetstreamManager>>;

async function ensureStream(jsm: Jsm, cfg: Parameters<Jsm["streams"]["add"]>[0]): Promise<void> {
  try {
    await jsm.streams.info(cfg.name!);
  } catch {
    await jsm.streams.add(cfg);
  }
}
