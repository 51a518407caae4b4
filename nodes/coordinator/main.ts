/** The coordinator process: NATS adapters around the CoordinatorRuntime. */
import { jetstreamManager } from "@nats-io/jetstream";
import { Kvm } from "@nats-io/kv";
import { connectNats, drainWithin } from "../../shared/adapters/nats/connection.js";
import { JetStreamJsonStore, openBucket } from "../../shared/adapters/nats/jetstream-json-store.js";
import { NatsCoordinatorControlBus } from "../../shared/adapters/nats/nats-control-bus.js";
import { listShardConsumers } from "../../shared/adapters/nats/shard-consumers.js";
import { NatsSinkInspector } from "../../shared/adapters/sink/nats-sink.js";
import { openInspector } from "../../shared/adapters/sink/open-sinks.js";
import { allShardKeys, pipelineOf } from "../../shared/contract/config.js";
import type { AssignmentEntry } from "../../shared/contract/ownership.js";
import { systemScheduler } from "../../shared/contract/ports.js";
import { Buckets } from "../../shared/contract/wire.js";
import { backlogByPipeline, initialScaling, scaleStep, scalingPolicy } from "../../shared/core/autoscale.js";
import { liveMembers } from "../../shared/core/coordinator-core.js";
import type { LeaderRecord } from "../../shared/core/leader-election.js";
import {
  type CoordinatorRecord,
  CoordinatorRuntime,
  LEADER_KEY,
} from "../../shared/runtime/coordinator-runtime.js";
import { createLogger } from "../../shared/telemetry/log.js";
import { CoordinatorMetrics } from "../../shared/telemetry/metrics.js";
import { startTelemetry } from "../../shared/telemetry/telemetry.js";
import { NodeHttpServer } from "../node-http.js";
import { onShutdown, parseNodeOptions } from "../node-options.js";
import { DashboardServer } from "./dashboard/dashboard-server.js";

const opts = parseNodeOptions("coordinator", process.argv);
const policy = scalingPolicy(opts.config.autoscale);
let scaling = initialScaling(policy);
const log = createLogger(opts.id, "coordinator");
const http = new NodeHttpServer();
// /metrics on the node's endpoint; traces only when OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set.
const telemetry = startTelemetry({ serviceName: "sluice-coordinator", nodeId: opts.id, http });
const metrics = new CoordinatorMetrics(telemetry.meter, {
  members: () =>
    liveMembers(runtime.state, Date.now(), {
      failureTimeoutMs: opts.config.timing.failureTimeoutMs,
      handoffTimeoutMs: opts.config.timing.handoffTimeoutMs,
      writeTimeoutMs: 2_000,
    }).length,
  isLeader: () => runtime.isLeader,
  merges: () => dashboard.model.state?.merges ?? [],
  scaling: () => {
    // From the dashboard's last poll: with a shard's lag unknown, the count stays as it was.
    const backlog = backlogByPipeline(dashboard.model.state?.shards ?? []);
    const known = [...backlog.values()];
    if (known.length > 0 && known.every((n) => n !== null))
      scaling = scaleStep(
        scaling,
        known.reduce((a, n) => a + n!, 0),
        Date.now(),
        policy,
      );
    return { backlog, desiredWorkers: scaling.samples.length > 0 ? scaling.desired : null };
  },
});
const nc = await connectNats({
  servers: opts.servers,
  name: `sluice-coordinator-${opts.id}`,
  auth: opts.auth,
  tls: opts.tls,
});
const kvm = new Kvm(nc);
const control = new JetStreamJsonStore<CoordinatorRecord>(await openBucket(kvm, Buckets.coordinator));
const jsm = await jetstreamManager(nc, { timeout: 3_000, checkAPI: false });
// Short timeouts: a slow sink or JetStream only leaves a value unknown for one refresh.
const sinkInspector = openInspector(opts.config, { sqlite: () => new NatsSinkInspector(nc, 800), nc });
const dashboard = new DashboardServer({
  self: opts.id,
  shards: allShardKeys(opts.config),
  pipelines: opts.config.pipelines.map((p) => p.name),
  failureTimeoutMs: opts.config.timing.failureTimeoutMs,
  config: opts.config,
  state: () => runtime.state,
  readLeader: async () => ((await control.get(LEADER_KEY)).value as LeaderRecord | null) ?? null,
  listConsumers: (pipeline) => listShardConsumers(nc, jsm, pipelineOf(opts.config, pipeline)),
  sink: sinkInspector,
  log,
});
const runtime = new CoordinatorRuntime({
  id: opts.id,
  shards: allShardKeys(opts.config),
  assignments: new JetStreamJsonStore<AssignmentEntry>(await openBucket(kvm, Buckets.assignments)),
  control,
  bus: new NatsCoordinatorControlBus(nc),
  scheduler: systemScheduler,
  timing: opts.config.timing,
  log,
  onCommand: (c) => dashboard.command(c),
  onLeadership: (leader, term) => {
    dashboard.leadership(leader, term);
    metrics.leadership(leader);
  },
  onWrite: (c, result) => {
    if (result === "ok") metrics.written(c.shard, c.entry, c.reason);
  },
  onHeartbeat: (_worker, delayMs) => metrics.heartbeat(delayMs),
});
await runtime.start();
// Ready once it takes part in the leader election (started; a stopping one is not).
let stopping = false;
http.readiness(() => (stopping ? "stopping" : null));
if (opts.httpPort > 0) {
  // The dashboard polls only where a page can be served.
  dashboard.mount(http).start();
  await http.start(opts.httpPort, opts.httpBind);
}
log.info({ servers: opts.servers }, "coordinator started");

onShutdown(async () => {
  stopping = true;
  await dashboard.stop();
  await http.stop();
  await runtime.stop();
  await drainWithin(nc);
  await telemetry.shutdown();
  log.info({}, "stopped");
});
