/**
 * The Prometheus metrics of each node role, recorded from the runtimes' hooks (the runtimes
 * themselves know nothing of meters). Names and labels come from `attributes.ts`; every
 * duration is in seconds, as Prometheus expects.
 */

import type { Attributes, Counter, Histogram, Meter, ObservableResult } from "@opentelemetry/api";
import { ErrorCode, isSluiceError } from "../contract/errors.js";
import type { AssignmentEntry, RuleCounts, ShardRef } from "../contract/ownership.js";
import type { BatchReport } from "../contract/pipeline-reports.js";
import type { Checkpoint, CommitOptions, CommitResult, Sink, SinkRow } from "../contract/ports.js";
import type { HandoffReason } from "../core/coordinator-core.js";
import type { MergeStatus } from "../core/merge-convergence.js";
import { MetricLabels, MetricNames } from "./attributes.js";

/** Sink and worker commit round trips: 0.5 ms to 10 s. */
const COMMIT_SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** Records per batch: powers of two up to 8192. */
const BATCH_RECORDS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192];
/** Hand-offs: 10 ms (a prompt release) to 60 s (forced after the hand-off timeout). */
const HANDOFF_SECONDS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60];
/** Heartbeat delay, wall clock of two processes: 0.5 ms to 2.5 s. */
const HEARTBEAT_SECONDS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

const shardLabels = (ref: ShardRef): Attributes => ({
  [MetricLabels.pipeline]: ref.pipeline,
  [MetricLabels.shard]: String(ref.shard),
});

/** Every reason an assignment is written for: their counters start at 0, so rate() sees the first one. */
const ASSIGNMENT_REASONS = [
  "initial",
  "failure",
  "rebalance",
  "released",
  "handoff-timeout",
  "refence",
  "reassert",
] as const satisfies readonly HandoffReason[];

interface ShardGauges {
  ref: ShardRef;
  epoch: number;
  lag?: number;
  committedSeq?: number;
  /** The shard's circuit breaker: 0 closed, 1 half-open, 2 open. */
  circuit?: number;
}

const CIRCUIT_LEVEL = { closed: 0, "half-open": 1, open: 2 } as const;

/** Worker: records in/committed/dead-lettered, commit latency, batch size, per-shard gauges. */
export class WorkerMetrics {
  private readonly recordsIn: Counter;
  private readonly committed: Counter;
  private readonly deadLettered: Counter;
  private readonly historyMismatches: Counter;
  private readonly commitRetries: Counter;
  private readonly ruleRecords: Counter;
  private readonly duplicates: Counter;
  private readonly commitSeconds: Histogram;
  private readonly batchRecords: Histogram;
  /** Shards whose lease runs here, key `P.shard`: only these report gauges. */
  private readonly shards = new Map<string, ShardGauges>();

  constructor(meter: Meter) {
    this.recordsIn = meter.createCounter(MetricNames.recordsIn, {
      description: "Records pulled from the shard's consumer into a batch",
      unit: "{record}",
    });
    this.committed = meter.createCounter(MetricNames.recordsCommitted, {
      description: "Rows written to the sink (redeliveries skipped are not counted)",
      unit: "{record}",
    });
    this.deadLettered = meter.createCounter(MetricNames.recordsDeadLettered, {
      description: "Records sent to the dead-letter stream",
      unit: "{record}",
    });
    this.historyMismatches = meter.createCounter(MetricNames.historyMismatches, {
      description: "Acquisitions whose checkpoint record was not at its sequence; reconciled by record id",
    });
    this.commitRetries = meter.createCounter(MetricNames.commitRetries, {
      description: "Sink commits that failed for a retryable reason and are tried again",
    });
    this.duplicates = meter.createCounter(MetricNames.recordsDuplicate, {
      description:
        "Records the sink dropped as duplicates of a business key committed within the dedupe window",
      unit: "{record}",
    });
    this.ruleRecords = meter.createCounter(MetricNames.ruleRecords, {
      description:
        "Records a quality rule checked, by outcome: passed, rejected (enforced) or shadowed (kept)",
      unit: "{record}",
    });
    this.commitSeconds = meter.createHistogram(MetricNames.commitDuration, {
      description: "Sink commit round trip of a batch, seconds",
      unit: "s",
      advice: { explicitBucketBoundaries: COMMIT_SECONDS },
    });
    this.batchRecords = meter.createHistogram(MetricNames.batchSize, {
      description: "Records per committed batch",
      unit: "{record}",
      advice: { explicitBucketBoundaries: BATCH_RECORDS },
    });
    const observe =
      (pick: (g: ShardGauges) => number | undefined) =>
      (r: ObservableResult): void => {
        for (const g of this.shards.values()) {
          const v = pick(g);
          if (v !== undefined) r.observe(v, shardLabels(g.ref));
        }
      };
    meter
      .createObservableGauge(MetricNames.shardLag, {
        description: "Records in the stream not yet committed by this shard's owner",
        unit: "{record}",
      })
      .addCallback(observe((g) => g.lag));
    meter
      .createObservableGauge(MetricNames.shardCommittedSeq, {
        description: "Last committed source sequence of the shard (the sink's checkpoint)",
      })
      .addCallback(observe((g) => g.committedSeq));
    meter
      .createObservableGauge(MetricNames.shardCircuit, {
        description: "The shard's circuit breaker: 0 closed, 1 half-open, 2 open",
      })
      .addCallback(observe((g) => g.circuit));
    meter
      .createObservableGauge(MetricNames.shardEpoch, { description: "Epoch of the shard's lease run here" })
      .addCallback(observe((g) => g.epoch));
  }

  private gauges(ref: ShardRef, epoch: number): ShardGauges {
    const key = `${ref.pipeline}.${ref.shard}`;
    let g = this.shards.get(key);
    if (!g || g.epoch < epoch) {
      if (!g) {
        // Counters of a shard exist from its first lease on, at 0, so rate() sees the first increment.
        const labels = shardLabels(ref);
        this.recordsIn.add(0, labels);
        this.committed.add(0, labels);
        this.deadLettered.add(0, labels);
        this.commitRetries.add(0, labels);
      }
      g = { ref, epoch };
      this.shards.set(key, g);
    }
    return g;
  }

  /**
   * A batch of `records` is about to be committed; `pending` is the last record's count of
   * messages still undelivered to the consumer (JetStream's num_pending), when known.
   */
  batchStarted(r: { ref: ShardRef; epoch: number; records: number; pending?: number }): void {
    this.recordsIn.add(r.records, shardLabels(r.ref));
    // Not committed yet: what is still in the stream plus this batch.
    if (r.pending !== undefined) this.gauges(r.ref, r.epoch).lag = r.pending + r.records;
  }

  /** A batch committed and acked. */
  batchCommitted(r: BatchReport): void {
    const labels = shardLabels(r.ref);
    const perPipeline = { [MetricLabels.pipeline]: r.ref.pipeline };
    if (r.committed > 0) this.committed.add(r.committed, labels);
    if (r.deadLettered > 0) this.deadLettered.add(r.deadLettered, labels);
    if (r.duplicates > 0) this.duplicates.add(r.duplicates, labels);
    this.commitSeconds.record(r.commitMs / 1000, perPipeline);
    this.batchRecords.record(r.committed + r.skipped + r.deadLettered, perPipeline);
    const g = this.gauges(r.ref, r.epoch);
    g.committedSeq = r.checkpoint;
    g.circuit = CIRCUIT_LEVEL.closed;
    if (r.pending !== undefined) g.lag = r.pending;
  }

  /** A commit failed and will be tried again; `breaker` is the shard's breaker after it. */
  commitRetry(r: { ref: ShardRef; epoch: number; breaker: { kind: keyof typeof CIRCUIT_LEVEL } }): void {
    this.commitRetries.add(1, shardLabels(r.ref));
    this.gauges(r.ref, r.epoch).circuit = CIRCUIT_LEVEL[r.breaker.kind];
  }

  /** The stream's history changed under a shard's checkpoint (see `HistoryMismatchReport`). */
  /** A batch's quality-rule outcomes (`RulesStage`). */
  rules(pipeline: string, counts: Readonly<Record<string, RuleCounts>>): void {
    for (const [rule, c] of Object.entries(counts)) {
      const at = (outcome: string): Attributes => ({
        [MetricLabels.pipeline]: pipeline,
        [MetricLabels.rule]: rule,
        [MetricLabels.outcome]: outcome,
      });
      const passed = c.checked - c.rejected - c.shadowed;
      if (passed > 0) this.ruleRecords.add(passed, at("passed"));
      if (c.rejected > 0) this.ruleRecords.add(c.rejected, at("rejected"));
      if (c.shadowed > 0) this.ruleRecords.add(c.shadowed, at("shadowed"));
    }
  }

  historyMismatch(ref: ShardRef): void {
    this.historyMismatches.add(1, shardLabels(ref));
  }

  /** Lease life cycle: a lease starting here reports its shard; one ending stops reporting it. */
  lease(e: { shard: string; epoch: number; event: string }, ref: ShardRef | undefined): void {
    if (!ref) return;
    const key = `${ref.pipeline}.${ref.shard}`;
    if (e.event === "released" || e.event === "fenced") {
      if (this.shards.get(key)?.epoch === e.epoch) this.shards.delete(key);
      return;
    }
    this.gauges(ref, e.epoch);
  }
}

/** Coordinator: assignment writes, hand-offs and their durations, heartbeats, leadership. */
export class CoordinatorMetrics {
  private readonly assignments: Counter;
  private readonly handoffs: Counter;
  private readonly handoffSeconds: Histogram;
  private readonly heartbeatSeconds: Histogram;
  private readonly leaderChanges: Counter;
  /** shard -> time (performance.now(), ms) its revoking entry was written. */
  private readonly revokingSince = new Map<string, number>();

  constructor(
    meter: Meter,
    state: {
      members(): number;
      isLeader(): boolean;
      /** The merges' convergence as last observed (the dashboard's poll); none when absent. */
      merges?(): readonly MergeStatus[];
      /**
       * Each pipeline's backlog (null: unknown) and the worker count it asks for, as last
       * observed; read once per scrape.
       */
      scaling?(): { backlog: ReadonlyMap<string, number | null>; desiredWorkers: number | null };
    },
    private readonly now: () => number = () => performance.now(),
  ) {
    this.assignments = meter.createCounter(MetricNames.assignments, {
      description: "Assignment entries written, by reason",
    });
    this.handoffs = meter.createCounter(MetricNames.handoffs, {
      description: "Shards moved from a previous owner to a new epoch, by reason",
    });
    this.handoffSeconds = meter.createHistogram(MetricNames.handoffDuration, {
      description: "From the revoking write to the next owner's active write, seconds",
      unit: "s",
      advice: { explicitBucketBoundaries: HANDOFF_SECONDS },
    });
    this.heartbeatSeconds = meter.createHistogram(MetricNames.heartbeatDelay, {
      description: "Heartbeat receive time minus the worker's send time, seconds",
      unit: "s",
      advice: { explicitBucketBoundaries: HEARTBEAT_SECONDS },
    });
    this.leaderChanges = meter.createCounter(MetricNames.leaderChanges, {
      description: "Times this coordinator became leader",
    });
    // Exported at 0 from the start, so dashboards and rate() see the first event.
    this.leaderChanges.add(0);
    for (const reason of ASSIGNMENT_REASONS) {
      this.assignments.add(0, { [MetricLabels.reason]: reason });
      if (reason !== "initial" && reason !== "rebalance")
        this.handoffs.add(0, { [MetricLabels.reason]: reason });
    }
    meter
      .createObservableGauge(MetricNames.members, { description: "Workers this coordinator considers alive" })
      .addCallback((r) => r.observe(state.members()));
    meter
      .createObservableGauge(MetricNames.isLeader, { description: "1 while this coordinator is leader" })
      .addCallback((r) => r.observe(state.isLeader() ? 1 : 0));
    if (state.merges) observeMerges(meter, state.merges.bind(state));
    if (state.scaling) {
      const backlog = meter.createObservableGauge(MetricNames.pipelineBacklog, {
        description: "Records in the pipeline's streams not yet committed: its shards' lag summed",
        unit: "{record}",
      });
      const desired = meter.createObservableGauge(MetricNames.desiredWorkers, {
        description: "The worker count the backlog asks for, with hysteresis (autoscale in the config)",
      });
      meter.addBatchObservableCallback(
        (r) => {
          const s = state.scaling!();
          for (const [pipeline, n] of s.backlog)
            if (n !== null) r.observe(backlog, n, { [MetricLabels.pipeline]: pipeline });
          if (s.desiredWorkers !== null) r.observe(desired, s.desiredWorkers);
        },
        [backlog, desired],
      );
    }
  }

  /** An assignment write the KV accepted. */
  written(shard: string, entry: AssignmentEntry, reason: string): void {
    this.assignments.add(1, { [MetricLabels.reason]: reason });
    if (entry.phase === "revoking") {
      if (!this.revokingSince.has(shard)) this.revokingSince.set(shard, this.now());
      return;
    }
    const since = this.revokingSince.get(shard);
    this.revokingSince.delete(shard);
    // `initial` has no previous owner; an entry naming nobody moves the shard nowhere.
    if (reason === "initial" || entry.owner === null) return;
    this.handoffs.add(1, { [MetricLabels.reason]: reason });
    if (since !== undefined) {
      this.handoffSeconds.record((this.now() - since) / 1000, { [MetricLabels.reason]: reason });
    }
  }

  heartbeat(delayMs: number): void {
    this.heartbeatSeconds.record(Math.max(0, delayMs) / 1000);
  }

  leadership(leader: boolean): void {
    if (leader) this.leaderChanges.add(1);
    // A new leader cannot know when the old one began a hand-off.
    else this.revokingSince.clear();
  }
}

/** A value, or null for unknown: an unknown one is left out of the scrape, not exported as 0. */
type MergeSeries = (m: MergeStatus) => Array<{ value: number | null; labels: Attributes }>;

/** The merges' convergence gauges, observed from `merges()` at each scrape. */
function observeMerges(meter: Meter, merges: () => readonly MergeStatus[]): void {
  const gauge = (name: string, description: string, unit: string, series: MergeSeries): void => {
    meter.createObservableGauge(name, { description, unit }).addCallback((r) => {
      for (const m of merges())
        for (const { value, labels } of series(m)) if (value !== null) r.observe(value, labels);
    });
  };
  const perBranch =
    (pick: (b: MergeStatus["branches"][number]) => number | null): MergeSeries =>
    (m) =>
      m.branches.map((b) => ({
        value: pick(b),
        labels: { [MetricLabels.merge]: m.merge, [MetricLabels.pipeline]: b.pipeline },
      }));
  gauge(
    MetricNames.mergeConvergenceWatermark,
    "The merge's convergence watermark, ms since the epoch: its rows are final for event times below it",
    "ms",
    (m) => [{ value: m.convergence, labels: { [MetricLabels.merge]: m.merge } }],
  );
  gauge(
    MetricNames.mergeBranchWatermark,
    "The branch's lowest shard watermark, ms since the epoch",
    "ms",
    perBranch((b) => b.watermark),
  );
  gauge(
    MetricNames.mergeBranchLag,
    "How far the branch's watermark trails the merge's most advanced branch, ms",
    "ms",
    perBranch((b) => b.lagMs),
  );
  gauge(
    MetricNames.mergeLatePending,
    "The branch's late records not yet reconciled into the merge",
    "{record}",
    perBranch((b) => b.pendingLate),
  );
}

/** Sink: wraps the sink the process serves, counting and timing commits and fence rejections. */
export function instrumentSink(sink: Sink, meter: Meter, now: () => number = () => performance.now()): Sink {
  const commits = meter.createCounter(MetricNames.sinkCommits, { description: "Commits the sink applied" });
  const commitSeconds = meter.createHistogram(MetricNames.sinkCommitDuration, {
    description: "The sink's commit transaction, seconds",
    unit: "s",
    advice: { explicitBucketBoundaries: COMMIT_SECONDS },
  });
  const fenced = meter.createCounter(MetricNames.sinkFenced, {
    description: "Commits and fences rejected because a higher epoch is fenced",
  });
  commits.add(0);
  fenced.add(0);
  const countFenced = (err: unknown): never => {
    if (isSluiceError(err, ErrorCode.Fenced)) fenced.add(1);
    throw err;
  };
  return {
    fence: (ref: ShardRef, epoch: number): Promise<Checkpoint> => sink.fence(ref, epoch).catch(countFenced),
    async commit(
      ref: ShardRef,
      epoch: number,
      worker: string,
      rows: SinkRow[],
      lastSeq: number,
      opts?: CommitOptions,
    ): Promise<CommitResult> {
      const t0 = now();
      const res = await sink.commit(ref, epoch, worker, rows, lastSeq, opts).catch(countFenced);
      commits.add(1);
      commitSeconds.record((now() - t0) / 1000);
      return res;
    },
    checkpoint: (ref: ShardRef) => sink.checkpoint(ref),
    recordIds: (ref: ShardRef, fromSeq: number) => sink.recordIds(ref, fromSeq),
    close: () => sink.close(),
  };
}
