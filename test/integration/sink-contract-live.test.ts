/**
 * The sink contract suite (`test/kit/sink-contract.ts`) against the sinks that need a real
 * server: PostgreSQL (a private server of this file) and the JetStream output stream (a real
 * 3-node NATS cluster).
 */
import { jetstreamManager, RetentionPolicy, StorageType } from "@nats-io/jetstream";
import type { Pool } from "pg";
import { afterAll, beforeAll } from "vitest";
import { JetStreamOutputInspector } from "../../shared/adapters/nats/jetstream-output-inspector.js";
import { JetStreamOutputStore } from "../../shared/adapters/nats/jetstream-output-store.js";
import { OutputStreamSink } from "../../shared/adapters/sink/output-stream-sink.js";
import { PostgresSinkInspector } from "../../shared/adapters/sink/postgres-inspector.js";
import { postgresPool } from "../../shared/adapters/sink/postgres-pool.js";
import { PostgresSink } from "../../shared/adapters/sink/postgres-sink.js";
import { parseConfig } from "../../shared/contract/config.js";
import { outputStream, outputSubjects } from "../../shared/contract/wire.js";
import { startTestPostgres, type TestPostgres } from "../kit/postgres.js";
import { sinkContract } from "../kit/sink-contract.js";
import { startTestCluster, type TestCluster } from "./harness.js";

let pgServer: TestPostgres | undefined;
let nats: TestCluster | undefined;
beforeAll(async () => {
  pgServer = await startTestPostgres();
  nats = await startTestCluster({ workers: 0, coordinators: 0 });
}, 120_000);
afterAll(async () => {
  await nats?.stop();
  await pgServer?.stop();
});

{
  let db = 0;
  let url = "";
  const pools: Pool[] = [];
  const pool = (): Pool => {
    const p = postgresPool(parseConfig({ sink: { type: "postgres", url } }).sink as never, { max: 4 });
    pools.push(p);
    return p;
  };
  const sink = (): PostgresSink =>
    new PostgresSink(pool(), { pipelines: [{ name: "demo" }, { name: "orders" }] });
  sinkContract("PostgresSink", {
    open: async () => {
      url = await pgServer!.newDatabase(`contract_${++db}`);
      return sink();
    },
    again: async () => sink(),
    inspector: async () => new PostgresSinkInspector(pool()),
    cleanUp: async () => {
      for (const p of pools.splice(0)) await p.end().catch(() => undefined);
    },
  });
}

{
  const pipelines = [
    { name: "demo", shards: 10 },
    { name: "orders", shards: 4 },
  ];
  sinkContract("OutputStreamSink on JetStream", {
    open: async () => {
      const jsm = await jetstreamManager(nats!.nc);
      for (const p of pipelines) {
        await jsm.streams.delete(outputStream(p.name)).catch(() => undefined);
        await jsm.streams.add({
          name: outputStream(p.name),
          subjects: [outputSubjects(p.name)],
          num_replicas: 3,
          storage: StorageType.File,
          retention: RetentionPolicy.Limits,
          allow_atomic: true,
        });
      }
      return new OutputStreamSink(new JetStreamOutputStore(nats!.nc));
    },
    again: async () => new OutputStreamSink(new JetStreamOutputStore(nats!.nc)),
    inspector: async () => new JetStreamOutputInspector(nats!.nc, pipelines),
    cleanUp: async () => {},
  });
}
