/**
 * Every span name, span attribute key, metric name and metric label used anywhere in sluice,
 * in one place (as BullMQ's `TelemetryAttributes`), so dashboards, tests and code agree.
 *
 * Messaging keys follow the OpenTelemetry messaging semantic conventions (v1.45; copied as
 * literals because the `incubating` entry point of @opentelemetry/semantic-conventions is not
 * stable across releases). sluice's own keys live under `sluice.`.
 *
 * Pure data: no imports, so any layer may read it.
 */

/** Span attribute keys. */
export const TelemetryAttributes = {
  // --- OpenTelemetry messaging semantic conventions ---
  /** Always `nats`. */
  messagingSystem: "messaging.system",
  /** The subject a record was published to (`ingest.P.<key>`) or the shard filter consumed. */
  messagingDestinationName: "messaging.destination.name",
  /** Low-cardinality form of the destination (`ingest.P.*`, `sluice.in.P.*`). */
  messagingDestinationTemplate: "messaging.destination.template",
  /** The shard a batch was consumed from (`messaging.destination.partition.id`). */
  messagingDestinationPartitionId: "messaging.destination.partition.id",
  /** `send` | `receive` | `process` | `settle` (see `MessagingOperation`). */
  messagingOperationType: "messaging.operation.type",
  /** The system-specific operation name (`publish`, `process`, `ack`). */
  messagingOperationName: "messaging.operation.name",
  /** Records in a batch. */
  messagingBatchMessageCount: "messaging.batch.message_count",
  /** The record's id: its `Nats-Msg-Id`. */
  messagingMessageId: "messaging.message.id",
  /** Payload size in bytes. */
  messagingMessageBodySize: "messaging.message.body.size",
  /** The durable consumer of one shard at one epoch (`P-s<shard>-e<epoch>`). */
  messagingConsumerGroupName: "messaging.consumer.group.name",
  /** The NATS connection's name. */
  messagingClientId: "messaging.client.id",

  // --- sluice ---
  pipeline: "sluice.pipeline",
  shard: "sluice.shard",
  epoch: "sluice.epoch",
  /** The node (worker, coordinator, sink, producer) that emitted the span. */
  nodeId: "sluice.node.id",
  /** The worker that owns, commits or releases a shard. */
  worker: "sluice.worker",
  /** Why an assignment was written or a lease handed off (`HandoffReason`, or worker-side reasons). */
  handoffReason: "sluice.handoff.reason",
  /** The owner an assignment entry names. */
  owner: "sluice.assignment.owner",
  /** `active` | `revoking`. */
  phase: "sluice.assignment.phase",
  /** The worker a revoking entry hands the shard to. */
  next: "sluice.assignment.next",
  /** Outcome of an assignment write: `ok` | `conflict` | `failed`. */
  writeResult: "sluice.assignment.result",
  /** Stream sequence of a published record (from its PubAck). */
  sourceSeq: "sluice.source.seq",
  /** Re-sends of a record whose PubAck was overdue. */
  resends: "sluice.publish.resends",
  /** Final status of a publish: `acked` | `failed` | `timeout`. */
  publishStatus: "sluice.publish.status",
  /** JetStream dropped the publish as a duplicate of an earlier one with the same id. */
  publishDuplicate: "sluice.publish.duplicate",
  /** The sink's checkpoint (last committed source sequence) after a commit or fence. */
  checkpoint: "sluice.checkpoint",
  /** Rows a commit wrote. */
  committed: "sluice.commit.rows",
  /** Rows a commit skipped as already committed (redeliveries). */
  skipped: "sluice.commit.skipped",
  /** Records of a batch sent to the dead-letter stream. */
  deadLettered: "sluice.dead_lettered",
  /** How a run of a batch ended when it did not commit: `stale` | `fenced` | `failed`. */
  batchOutcome: "sluice.batch.outcome",
  /** How a lease ended: `released` | `fenced`. */
  leaseResult: "sluice.lease.result",
  /** The sink request served: `fence` | `commit` | `checkpoint`. */
  sinkOperation: "sluice.sink.operation",
  /** Producer span links a batch span dropped beyond its cap. */
  droppedLinks: "sluice.links.dropped",
} as const;

/** Values of `messaging.operation.type`. */
export const MessagingOperation = {
  send: "send",
  receive: "receive",
  process: "process",
  settle: "settle",
} as const;

export const MESSAGING_SYSTEM = "nats";

/**
 * Span names. Messaging spans follow the convention `{operation} {destination template}`;
 * the `*Prefix` constants are that operation word, completed by `messagingSpanName`.
 */
export const SpanNames = {
  /** PRODUCER, one per published record, from send until its PubAck: `send ingest.P.*`. */
  publishPrefix: "send",
  /** CONSUMER, one per batch a worker commits: `process sluice.in.P.*`. */
  processPrefix: "process",
  /** CLIENT, the ack of a batch (AckPolicy all: one ack settles it): `settle sluice.in.P.*`. */
  settlePrefix: "settle",
  /** CLIENT, a worker's fenced sink commit of a batch; child of the process span. */
  sinkCommit: "sink.commit",
  /** CLIENT, a worker's dead-letter publish of a batch's bad records. */
  deadLetter: "dead-letter.publish",
  /** SERVER, the sink process serving a fence/commit/checkpoint request: `sink.serve commit`. */
  sinkServePrefix: "sink.serve",
  /** INTERNAL, a worker acquiring a lease: fence the sink, remove older consumers, open its own. */
  leaseAcquire: "lease.acquire",
  /** INTERNAL, a worker handing a shard off: drain (commit + ack the in-flight batch) and release. */
  leaseHandoff: "lease.handoff",
  /** CLIENT, the leader coordinator's compare-and-set of one assignment entry. */
  assignmentWrite: "assignment.write",
} as const;

/** `send ingest.P.*`: operation word plus the low-cardinality destination. */
export function messagingSpanName(prefix: string, destinationTemplate: string): string {
  return `${prefix} ${destinationTemplate}`;
}

/** W3C trace-context header names carried in NATS message headers. */
export const TraceHeaders = {
  traceparent: "traceparent",
  tracestate: "tracestate",
} as const;

/**
 * Metric names exactly as Prometheus serves them. The instrument names are already in
 * Prometheus form (the exporter only swaps invalid characters and appends `_total` to
 * counters that lack it), so the name here is the name on /metrics; histograms add
 * `_bucket`, `_sum` and `_count`.
 */
export const MetricNames = {
  // workers
  /** Counter {pipeline, shard}: records pulled from the shard's consumer into a batch. */
  recordsIn: "sluice_records_in_total",
  /** Counter {pipeline, shard}: rows written to the sink (redeliveries skipped are not counted). */
  recordsCommitted: "sluice_records_committed_total",
  /** Counter {pipeline, shard}: records sent to the dead-letter stream. */
  recordsDeadLettered: "sluice_records_dead_lettered_total",
  /** Counter: records the sink dropped as duplicates of a business key within the dedupe window. */
  recordsDuplicate: "sluice_records_duplicate_total",
  /**
   * Counter {pipeline, shard}: acquisitions that found the stream no longer holding the
   * checkpoint's record at its sequence (a JetStream replica diverged) and reconciled by record id.
   */
  historyMismatches: "sluice_history_mismatches_total",
  /** Counter {pipeline, shard}: sink commits that failed for a retryable reason and are tried again. */
  commitRetries: "sluice_commit_retries_total",
  /** Gauge {pipeline, shard}: the shard's circuit breaker, 0 closed, 1 half-open, 2 open. */
  shardCircuit: "sluice_shard_circuit_state",
  /** Histogram {pipeline}, seconds: a worker's sink commit round trip. */
  commitDuration: "sluice_commit_duration_seconds",
  /** Histogram {pipeline}, records per committed batch. */
  batchSize: "sluice_batch_size_records",
  /** Gauge {pipeline, shard}: records in the stream not yet committed by this shard's owner. */
  shardLag: "sluice_shard_lag_records",
  /** Gauge {pipeline, shard}: last committed source sequence (the sink's checkpoint). */
  shardCommittedSeq: "sluice_shard_committed_seq",
  /** Gauge {pipeline, shard}: the epoch of the lease this worker runs. */
  shardEpoch: "sluice_shard_epoch",
  // coordinators
  /** Counter {reason}: assignment entries written (compare-and-set succeeded). */
  assignments: "sluice_assignments_total",
  /** Counter {reason}: shards moved from a previous owner to a new epoch. */
  handoffs: "sluice_handoffs_total",
  /** Histogram {reason}, seconds: from the revoking write to the next owner's active write. */
  handoffDuration: "sluice_handoff_duration_seconds",
  /** Histogram, seconds: heartbeat receive time minus the worker's send time. */
  heartbeatDelay: "sluice_heartbeat_delay_seconds",
  /** Counter: times this coordinator became leader (sum over coordinators: leader changes). */
  leaderChanges: "sluice_leader_changes_total",
  /** Gauge: workers this coordinator considers alive. */
  members: "sluice_members",
  /** Gauge: 1 while this coordinator is leader, else 0. */
  isLeader: "sluice_is_leader",
  /**
   * Gauge {merge}, ms since the epoch: the merge's convergence watermark (its rows are final
   * below it); absent until every branch shard has one.
   */
  mergeConvergenceWatermark: "sluice_merge_convergence_watermark_ms",
  /** Gauge {merge, pipeline}, ms since the epoch: the branch's lowest shard watermark; absent until every shard has one. */
  mergeBranchWatermark: "sluice_merge_branch_watermark_ms",
  /** Gauge {merge, pipeline}, ms: how far the branch's watermark trails the most advanced branch's. */
  mergeBranchLag: "sluice_merge_branch_lag_ms",
  /** Gauge {merge, pipeline}: the branch's late records not yet reconciled into the merge. */
  mergeLatePending: "sluice_merge_late_pending_records",
  /** Gauge {pipeline}: records in the pipeline's streams not yet committed (its shards' lag summed); absent while a shard's is unknown. */
  pipelineBacklog: "sluice_pipeline_backlog_records",
  /** Gauge: the worker count the backlog asks for, with hysteresis (README "Autoscaling"). */
  desiredWorkers: "sluice_desired_workers",
  // sink
  /** Counter: commits the sink applied. */
  sinkCommits: "sluice_sink_commits_total",
  /** Histogram, seconds: the sink's commit transaction. */
  sinkCommitDuration: "sluice_sink_commit_duration_seconds",
  /** Counter: commits (and fences) rejected because a higher epoch is fenced. */
  sinkFenced: "sluice_sink_fenced_total",
  /** Counter: records a quality rule checked, by `outcome` (`passed`, `rejected`, `shadowed`). */
  ruleRecords: "sluice_rule_records_total",
} as const;

/** Metric label keys (Prometheus labels; kept short and unprefixed on purpose). */
export const MetricLabels = {
  pipeline: "pipeline",
  shard: "shard",
  reason: "reason",
  /** A quality rule's name. */
  rule: "rule",
  /** What a rule did with a record: `passed`, `rejected` (enforced) or `shadowed` (kept). */
  outcome: "outcome",
  /** A merge's name (`merges[].name`). */
  merge: "merge",
} as const;

/** Resource attribute keys (OpenTelemetry resource semantic conventions). */
export const ResourceAttributes = {
  serviceName: "service.name",
  serviceInstanceId: "service.instance.id",
  serviceNamespace: "service.namespace",
} as const;

/** The instrumentation scope name of every tracer and meter. */
export const INSTRUMENTATION_SCOPE = "sluice";
