/**
 * The schema registry on NATS: its JSON store is the `sluice_schemas` KV bucket (made by
 * `sluice up`'s provisioning, or here on first use against a cluster that lacks it).
 */

import { Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import { Buckets } from "../../contract/wire.js";
import { type RegistryValue, SchemaRegistry } from "../../pipeline/schema-registry.js";
import { JetStreamJsonStore } from "./jetstream-json-store.js";

/** The registry of the cluster `nc` is connected to; `replicas` if the bucket must be made. */
export async function openSchemaRegistry(nc: NatsConnection, replicas: number): Promise<SchemaRegistry> {
  const kvm = new Kvm(nc);
  let kv: Awaited<ReturnType<Kvm["open"]>>;
  try {
    kv = await kvm.open(Buckets.schemas);
    await kv.status();
  } catch {
    // Reads must see the leader's latest: no direct gets from a lagging replica.
    kv = await kvm.create(Buckets.schemas, { replicas, history: 1, allow_direct: false });
  }
  return new SchemaRegistry(new JetStreamJsonStore<RegistryValue>(kv, "subject.>"));
}
