/** The worker process: NATS and SQLite adapters around the WorkerRuntime. */
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import { Kvm } from "@nats-io/kv";
import { AuditLog } from "../../shared/adapters/nats/audit-log.js";
import { connectNats, connectNearPipelines, drainWithin } from "../../shared/adapters/nats/connection.js";
import { JetStreamDeadLetterQueue } from "../../shared/adapters/nats/jetstream-dead-letter-queue.js";
import { JetStreamJsonStore, openBucket } from "../../shared/adapters/nats/jetstream-json-store.js";
import { JetStreamShardSource } from "../../shared/adapters/nats/jetstream-shard-source.js";
import { NatsWorkerControlBus } from "../../shared/adapters/nats/nats-control-bus.js";
import { JetStreamReferenceTables } from "../../shared/adapters/nats/reference-tables.js";
import { openSchemaRegistry } from "../../shared/adapters/nats/schema-store.js";
import { openWorkerSink } from "../../shared/adapters/sink/open-sinks.js";
import { configRevision, describeSink, mergeOf, sinkOf } from "../../shared/contract/config.js";
import { type AssignmentEntry, parseShardKey } from "../../shared/contract/ownership.js";
import { systemScheduler } from "../../shared/contract/ports.js";
import { Buckets } from "../../shared/contract/wire.js";
import { fenceAuditEntry } from "../../shared/core/audit-entries.js";
import { feedBufferMessages } from "../../shared/core/batch-size.js";
import { pipelineStages, RuleTally } from "../../shared/pipeline/pipeline-stages.js";
import { WorkerRuntime } from "../../shared/runtime/worker-runtime.js";
import { createLogger } from "../../shared/telemetry/log.js";
import { WorkerMetrics } from "../../shared/telemetry/metrics.js";
import { startTelemetry } from "../../shared/telemetry/telemetry.js";
import { NodeHttpServer } from "../node-http.js";
import { onShutdown, parseNodeOptions } from "../node-options.js";
import { HeartbeatKeepAlive } from "./heartbeat-keep-alive.js";
import { warmUpWorker } from "./warm-up.js";

/** A full garbage collection, without the process having been started with --expose-gc. */
function collectGarbage(): void {
  setFlagsFromString("--expose-gc");
  (runInNewContext("gc") as () => void)();
}

const opts = parseNodeOptions("worker", process.argv);
const log = createLogger(opts.id, "worker");
const http = new NodeHttpServer();
// Before telemetry starts, so the in-memory warm-up emits no span or metric; before joining,
// so the first lease granted here does not pay for compiling the data path.
const warmStart = performance.now();
const warm = await warmUpWorker({
  timing: opts.config.timing,
  settings: opts.config.worker,
  scheduler: systemScheduler,
});
// A full collection now, while nothing waits on this process: module loading and the warm-up
// left a young heap whose first major collection otherwise lands on the first leases granted
// here (a 100+ ms pause measured on a loaded 2-core machine).
collectGarbage();
log.info({ ...warm, ms: Math.round(performance.now() - warmStart) }, "warmed up");
// /metrics on the node's endpoint; traces only when OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set.
const telemetry = startTelemetry({ serviceName: "sluice-worker", nodeId: opts.id, http });
const metrics = new WorkerMetrics(telemetry.meter);
// Records, acks and sink requests: near the stream leader, where the shards' consumers are.
const nc = await connectNearPipelines({
  servers: opts.servers,
  name: `sluice-worker-${opts.id}`,
  auth: opts.auth,
  tls: opts.tls,
  pipelines: opts.config.pipelines,
});
// Heartbeats and assignments on a connection of their own: on the data connection they queue
// behind the records a full backlog pours into every shard's consumer (64 shards pulling at
// once are ~65k records), and the coordinator heard nothing from a busy, healthy worker for
// over a second and moved all its shards.
const control = await connectNats({
  servers: opts.servers,
  name: `sluice-worker-${opts.id}-control`,
  auth: opts.auth,
  tls: opts.tls,
});
// Heartbeats while the event loop is stalled by batch work (see `HeartbeatKeepAlive`). A loop
// silent for three failure timeouts is treated as dead.
const keepAlive = new HeartbeatKeepAlive({
  servers: opts.servers,
  name: `sluice-worker-${opts.id}-keep-alive`,
  auth: opts.auth,
  tls: opts.tls,
  heartbeatMs: opts.config.timing.heartbeatMs,
  stallLimitMs: 3 * opts.config.timing.failureTimeoutMs,
  onStall: (s) => {
    if (s.expired) log.warn(s, "event loop stalled past the keep-alive limit: the worker fell silent");
    // Past the failure timeout, this worker would have lost its shards without the keep-alives.
    else if (s.stalledMs > opts.config.timing.failureTimeoutMs)
      log.warn(s, "event loop stalled; the keep-alive thread heartbeat meanwhile");
    else log.debug(s, "event loop stalled; the keep-alive thread heartbeat meanwhile");
  },
  onEnded: (err) =>
    log.warn({ err: err.message }, "keep-alive thread ended: heartbeats rely on the event loop alone"),
});
await keepAlive.start();
const kv = await openBucket(new Kvm(control), Buckets.assignments);
// Each pipeline's sink: SQLite through the sink process, PostgreSQL directly, or its output stream.
const sink = openWorkerSink(opts.config, nc, opts.id);
// Stages after decode: the schema registry is opened only when a pipeline names a subject.
const schemas = opts.config.pipelines.some((p) => p.schema)
  ? await openSchemaRegistry(control, Math.min(3, opts.servers.length))
  : undefined;
// Reference tables for enrichment: one watch and cache per table, shared by every pipeline here,
// on the data connection so a large table's load does not queue ahead of heartbeats.
const references = opts.config.pipelines.some((p) => p.stages.some((s) => "enrich" in s))
  ? new JetStreamReferenceTables(nc, { log: log.child({ component: "reference-tables" }) })
  : undefined;
const tally = new RuleTally();
// A shadowed failure is logged at most once a second per rule: counted always, never a flood.
const shadowLoggedAt = new Map<string, number>();
const revisions = new Map(opts.config.pipelines.map((p) => [p.name, configRevision(p)]));
const stages = new Map(
  opts.config.pipelines.map((p) => [
    p.name,
    pipelineStages(p, {
      merge: mergeOf(opts.config, p),
      ...(schemas ? { schemas } : {}),
      ...(references ? { references } : {}),
      now: Date.now,
      onRules: (r) => {
        tally.add(r);
        metrics.rules(r.pipeline, r.counts);
        for (const [rule, x] of Object.entries(r.shadowExamples)) {
          const k = `${r.pipeline}.${rule}`;
          if (Date.now() - (shadowLoggedAt.get(k) ?? 0) < 1_000) continue;
          shadowLoggedAt.set(k, Date.now());
          log.info(
            { pipeline: r.pipeline, rule, recordId: x.recordId, detail: x.detail },
            "shadowed rule failed",
          );
        }
      },
    }),
  ]),
);
// Every fence is recorded in the audit stream, without the lease waiting for it (see `appendQuietly`).
const audit = new AuditLog(nc, log.child({ component: "audit" }));
const auditWho = { role: "worker", id: opts.id, ...(opts.auth ? { user: opts.auth.user } : {}) };
const runtime = new WorkerRuntime({
  id: opts.id,
  capacity: opts.capacity,
  assignments: new JetStreamJsonStore<AssignmentEntry>(kv),
  bus: new NatsWorkerControlBus(control, (hb) => keepAlive.beat(hb)),
  sink,
  source: new JetStreamShardSource(nc, {
    pipelines: opts.config.pipelines,
    maxAckPending: opts.config.worker.maxAckPending,
    ackWaitMs: opts.config.worker.ackWaitMs,
    bufferMessages: feedBufferMessages(opts.config.worker),
    // A shard that paused says why: missed heartbeats, a server status, a deleted consumer.
    onStatus: (e) => log.warn(e, "consumer notification"),
  }),
  deadLetters: new JetStreamDeadLetterQueue(nc),
  scheduler: systemScheduler,
  timing: opts.config.timing,
  settings: {
    ...opts.config.worker,
    reconcileWindowMs: Math.max(...opts.config.pipelines.map((p) => p.duplicateWindowMs)),
  },
  log,
  shardsOf: (pipeline) => opts.config.pipelines.find((p) => p.name === pipeline)?.shards,
  stagesOf: (pipeline) => stages.get(pipeline),
  configRevisionOf: (pipeline) => revisions.get(pipeline),
  ruleCounts: () => tally.snapshot(),
  onFence: (f) =>
    audit.appendQuietly(
      fenceAuditEntry({ ...f.ref, epoch: f.epoch, previous: f.previous }, auditWho, Date.now()),
      // A second report of the same fence (none is expected) is stored once.
      `fence-${f.ref.pipeline}-${f.ref.shard}-${f.epoch}-${opts.id}`,
    ),
  onBatchStart: (r) => metrics.batchStarted(r),
  onHistoryMismatch: (r) => metrics.historyMismatch(r.ref),
  onCommitRetry: (r) => metrics.commitRetry(r),
  onLeaseEvent: (e) => metrics.lease(e, parseShardKey(e.shard)),
  onBatch: (r) => {
    metrics.batchCommitted(r);
    if (r.deadLettered > 0)
      log.warn(
        { shard: `${r.ref.pipeline}.${r.ref.shard}`, epoch: r.epoch, count: r.deadLettered },
        "dead-lettered",
      );
  },
});
await runtime.start();
http.readiness(() => runtime.notReady());
if (opts.httpPort > 0) await http.start(opts.httpPort, opts.httpBind);
log.info(
  {
    servers: opts.servers,
    sinks: opts.config.pipelines.map((p) => `${p.name}: ${describeSink(sinkOf(opts.config, p))}`),
    // What each batch's audit row names (`sluice_batches.config_revision`).
    configRevisions: Object.fromEntries(revisions),
  },
  "worker started",
);

onShutdown(async () => {
  await http.stop();
  log.info({}, "draining");
  await runtime.drain();
  await references?.close();
  await keepAlive.stop();
  await Promise.all([drainWithin(nc), drainWithin(control)]);
  await sink.close();
  await telemetry.shutdown();
  log.info({}, "stopped");
});
