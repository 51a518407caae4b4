/** The coordinator process: NATS adapters around the CoordinatorRuntime. */
import { Kvm } from "@nats-io/kv";
import { allShardKeys } from "../../shared/config.js";
import { type CoordinatorRecord, CoordinatorRuntime } from "../../shared/coordinator/coordinator-runtime.js";
import type { AssignmentEntry } from "../../shared/core/types.js";
import { createLogger } from "../../shared/log.js";
import { connectNats } from "../../shared/nats/connection.js";
import { JetStreamJsonStore } from "../../shared/nats/jetstream-json-store.js";
import { NatsCoordinatorControlBus } from "../../shared/nats/nats-control-bus.js";
import { systemScheduler } from "../../shared/ports.js";
import { Buckets } from "../../shared/wire.js";
import { NodeHttpServer } from "../node-http.js";
import { onShutdown, parseNodeOptions } from "../node-options.js";

const opts = parseNodeOptions("coordinator", process.argv);
const log = createLogger(opts.id, "coordinator");
const http = new NodeHttpServer();
const nc = await connectNats({ servers: opts.servers, name: `sluice-coordinator-${opts.id}` });
const kvm = new Kvm(nc);
const runtime = new CoordinatorRuntime({
  id: opts.id,
  shards: allShardKeys(opts.config),
  assignments: new JetStreamJsonStore<AssignmentEntry>(await kvm.open(Buckets.assignments)),
  control: new JetStreamJsonStore<CoordinatorRecord>(await kvm.open(Buckets.coordinator)),
  bus: new NatsCoordinatorControlBus(nc),
  scheduler: systemScheduler,
  timing: opts.config.timing,
  log,
});
await runtime.start();
if (opts.httpPort > 0) await http.start(opts.httpPort);
log.info({ servers: opts.servers }, "coordinator started");

onShutdown(async () => {
  await http.stop();
  await runtime.stop();
  await nc.drain().catch(() => undefined);
  log.info({}, "stopped");
});
