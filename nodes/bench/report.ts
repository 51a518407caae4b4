/**
 * The benchmark's report: one typed shape for the JSON it writes (CI and deploy/bench-latest.json
 * depend on its keys), built from the parts' results, and the table it prints. Every ratio is
 * against a baseline measured in the same run.
 */
import { cpus, totalmem } from "node:os";
import { type BenchSettings, median, round } from "./bench-run.js";
import type { ClusterResult } from "./cluster-part.js";
import type { DurabilityResult } from "./durability-part.js";
import type { EndToEndPair } from "./end-to-end.js";
import { stealText } from "./host-cpu.js";
import type { MemoryResult } from "./memory-part.js";
import type { MergeResult } from "./merge-part.js";
import { type RoleCpuPerRecord, roleText } from "./process-cpu.js";
import { type SecurityResult, securedRatio } from "./security-part.js";
import type { SinksResult } from "./sinks-part.js";
import type { ThroughputResult } from "./throughput-part.js";

export interface BenchReport {
  started_at: string;
  finished_at: string;
  quick: boolean;
  machine: { cpus: number; cpu_model: string; memory_gib: number; node: string; nats_server: string };
  settings: { records: number; trials: number; memory_seconds: number };
  ratios: {
    producer_vs_js_publish: number;
    producer_vs_js_publish_r3: number;
    null_sink_vs_ordered_read: number;
    consumers_only_vs_ordered_read: number;
    null_sink_vs_consumers_only: number;
    schema_vs_plain: number;
    stages_vs_plain: number;
    null_sink_vs_ordered_read_one_shard: number;
    null_sink_vs_ordered_read_per_shard_streams: number;
    e2e_vs_naive: number;
    /** The producer into an R3 stream with fsync before each PubAck, against without. */
    producer_fsync_vs_replicated: number;
    /** End to end into each sink against the producer alone into an R3 stream, same cluster. */
    e2e_sqlite_vs_publish_r3: number;
    e2e_postgres_vs_publish_r3: number;
    e2e_jetstream_vs_publish_r3: number;
    /** End to end into PostgreSQL against a naive pipeline (a statement and an ack per record). */
    e2e_postgres_vs_naive: number;
    /**
     * The PostgreSQL cluster's ceiling: records received and acked only, by three processes
     * reading as three workers do, against the producer alone: the bound over every end-to-end
     * figure on that cluster.
     */
    ack_only_vs_publish_r3: number;
    /** Two branches' commits into SQLite also applied to a merge, against appended only. */
    merge_vs_append: number;
    /** The producer on the secured cluster (TLS, users, encrypted store) against `--insecure`. */
    producer_secured_vs_insecure: number;
    /** End to end into SQLite on the secured cluster against `--insecure`. */
    e2e_secured_vs_insecure: number;
  };
  throughput: {
    js_publish_r1_per_s: number;
    producer_r1_per_s: number;
    js_publish_r3_per_s: number;
    producer_r3_per_s: number;
    ordered_read_per_s: number;
    null_sink_per_s: number;
    consumers_only_per_s: number;
    schema_rules_per_s: number;
    transform_stages_per_s: number;
    ordered_read_one_shard_per_s: number;
    null_sink_one_shard_per_s: number;
    ordered_read_per_shard_streams_per_s: number;
    null_sink_per_shard_streams_per_s: number;
    /** Seconds in the best worker-path read before its last shard got its first record. */
    null_sink_start_spread_s: number;
    naive_e2e_per_s: number;
    sluice_e2e_per_s: number;
    publish_r3_sqlite_cluster_per_s: number;
    postgres_e2e_per_s: number;
    publish_r3_postgres_cluster_per_s: number;
    naive_postgres_e2e_per_s: number;
    ack_only_per_s: number;
    publish_r3_ack_only_per_s: number;
    sqlite_append_per_s: number;
    sqlite_merge_per_s: number;
    jetstream_e2e_per_s: number;
    publish_r3_jetstream_cluster_per_s: number;
  };
  durability: {
    producer_replicated_per_s: number;
    producer_fsync_per_s: number;
  };
  tracing: {
    off_per_s: number;
    sampled_1pct_per_s: number;
    always_on_per_s: number;
    sampled_vs_off: number;
    always_on_vs_off: number;
  };
  latency: {
    rate_per_s: number;
    records: number;
    publish_to_commit_p50_ms: number;
    publish_to_commit_p99_ms: number;
    publish_to_commit_max_ms: number;
  };
  failover: {
    worker_kill_trials_s: number[];
    worker_kill_median_s: number;
    worker_kill_max_s: number;
    leader_takeover_trials_s: number[];
    leader_takeover_s: number;
    leader_takeover_max_s: number;
  };
  rebalance: {
    scale_out_trials: Array<{
      moved: number;
      moved_max_gap_s: number;
      unmoved: number;
      unmoved_max_gap_s: number;
      unmoved_epoch_changes: number;
      baseline_max_gap_s: number;
      host_steal_pct: number | null;
    }>;
    scale_out_max_gap_s: number;
    scale_out_median_gap_s: number;
    unmoved_max_gap_s: number;
    baseline_max_gap_s: number;
    unmoved_epoch_changes: number;
  };
  memory: {
    shards: number;
    seconds: number;
    records: number;
    /** The run's pipeline stages: five normalise steps, an enrichment and dedupe. */
    stages: string;
    /** Rows in the sink at the end (the worker worked through its stages). */
    committed: number;
    rss_start_mib: number;
    rss_end_mib: number;
    rss_max_mib: number;
    rss_slope_second_half_mib_per_min: number;
    rss_first_third_median_mib: number;
    rss_last_third_median_mib: number;
    /** Times the coordinator declared the loaded, healthy worker lost during the run. */
    worker_lost: number;
    samples: Array<[number, number]>;
  };
  /**
   * CPU per record (µs) of each role on the end-to-end clusters (SQLite, PostgreSQL, output
   * stream), while the producer alone published into R3 and end to end: what limits the
   * end-to-end rates on shared cores.
   */
  cpu_us_per_record: Record<"sqlite" | "postgres" | "jetstream", EndToEndPair["cpu"]>;
  /**
   * CPU per record (µs) by role of the ack-only ceiling's median round and its producer-alone
   * side; the three readers count as `workers`.
   */
  ack_only_cpu_us_per_record: { publish: RoleCpuPerRecord; ack_only: RoleCpuPerRecord } | null;
  /**
   * Every round of each end-to-end comparison (the figures above are the round with the median
   * ratio), and the records sent end to end before the first round to warm the cluster up.
   */
  e2e_rounds: Record<
    "sqlite" | "postgres" | "jetstream",
    { warmup_records: number; rounds: Array<{ publish_per_s: number; e2e_per_s: number; ratio: number }> }
  >;
  /**
   * Every round of the ack-only ceiling (`ratios.ack_only_vs_publish_r3` is the median one), and
   * the records sent to the readers before the first round.
   */
  ack_only_rounds: {
    warmup_records: number;
    rounds: Array<{ publish_per_s: number; ack_only_per_s: number; ratio: number }>;
  };
  /**
   * What the hypervisor took from this machine in each part: figures of a part with high steal
   * were measured on a host that stalled every process at once.
   */
  host_steal_pct: Record<string, number | null>;
}

export interface BenchResults {
  settings: BenchSettings;
  startedAt: Date;
  natsServer: string;
  throughput: ThroughputResult;
  cluster: ClusterResult;
  memory: MemoryResult;
  durability: DurabilityResult;
  sinks: SinksResult;
  merge: MergeResult;
  security: SecurityResult;
  steal: Record<string, number | null>;
}

export function buildReport(r: BenchResults): BenchReport {
  const { throughput: t, cluster, memory } = r;
  const r3 = t.publish.bench_r3!;
  const r1 = t.publish.bench_r1!;
  const kills = cluster.kills;
  const gaps = cluster.scale.map((x) => x.movedMaxGapS);
  return {
    started_at: r.startedAt.toISOString(),
    finished_at: new Date().toISOString(),
    quick: r.settings.quick,
    machine: {
      cpus: cpus().length,
      cpu_model: cpus()[0]?.model ?? "unknown",
      memory_gib: round(totalmem() / 2 ** 30, 1),
      node: process.version,
      nats_server: r.natsServer,
    },
    settings: {
      records: r.settings.records,
      trials: r.settings.trials,
      memory_seconds: r.settings.memorySeconds,
    },
    ratios: {
      producer_vs_js_publish: round(r1.producer.perSecond / r1.js.perSecond, 2),
      producer_vs_js_publish_r3: round(r3.producer.perSecond / r3.js.perSecond, 2),
      null_sink_vs_ordered_read: round(t.worker.perSecond / t.ordered.perSecond, 2),
      consumers_only_vs_ordered_read: round(t.consumers.perSecond / t.ordered.perSecond, 2),
      null_sink_vs_consumers_only: round(t.worker.perSecond / t.consumers.perSecond, 2),
      schema_vs_plain: round(t.schema.perSecond / t.worker.perSecond, 2),
      stages_vs_plain: round(t.transform.perSecond / t.worker.perSecond, 2),
      null_sink_vs_ordered_read_one_shard: round(t.one.worker.perSecond / t.one.ordered.perSecond, 2),
      null_sink_vs_ordered_read_per_shard_streams: round(
        t.perShard.worker.perSecond / t.perShard.ordered.perSecond,
        2,
      ),
      e2e_vs_naive: round(cluster.e2e.perSecond / cluster.naive.perSecond, 2),
      producer_fsync_vs_replicated: round(
        r.durability.fsync.perSecond / r.durability.replicated.perSecond,
        2,
      ),
      e2e_sqlite_vs_publish_r3: round(cluster.e2e.perSecond / cluster.publish.perSecond, 2),
      e2e_postgres_vs_publish_r3: round(
        r.sinks.postgres.e2e.perSecond / r.sinks.postgres.publish.perSecond,
        2,
      ),
      e2e_jetstream_vs_publish_r3: round(
        r.sinks.jetstream.e2e.perSecond / r.sinks.jetstream.publish.perSecond,
        2,
      ),
      e2e_postgres_vs_naive: round(
        r.sinks.postgres.e2e.perSecond / (r.sinks.postgres.naive?.perSecond ?? Number.NaN),
        2,
      ),
      ack_only_vs_publish_r3: round(
        (r.sinks.postgres.ackOnly?.ackOnly.perSecond ?? Number.NaN) /
          (r.sinks.postgres.ackOnly?.publish.perSecond ?? Number.NaN),
        2,
      ),
      merge_vs_append: round(r.merge.merge.perSecond / r.merge.append.perSecond, 2),
      producer_secured_vs_insecure: round(securedRatio(r.security.producer), 2),
      e2e_secured_vs_insecure: round(securedRatio(r.security.e2e), 2),
    },
    throughput: {
      js_publish_r1_per_s: Math.round(r1.js.perSecond),
      producer_r1_per_s: Math.round(r1.producer.perSecond),
      js_publish_r3_per_s: Math.round(r3.js.perSecond),
      producer_r3_per_s: Math.round(r3.producer.perSecond),
      ordered_read_per_s: Math.round(t.ordered.perSecond),
      null_sink_per_s: Math.round(t.worker.perSecond),
      consumers_only_per_s: Math.round(t.consumers.perSecond),
      schema_rules_per_s: Math.round(t.schema.perSecond),
      transform_stages_per_s: Math.round(t.transform.perSecond),
      ordered_read_one_shard_per_s: Math.round(t.one.ordered.perSecond),
      null_sink_one_shard_per_s: Math.round(t.one.worker.perSecond),
      ordered_read_per_shard_streams_per_s: Math.round(t.perShard.ordered.perSecond),
      null_sink_per_shard_streams_per_s: Math.round(t.perShard.worker.perSecond),
      null_sink_start_spread_s: round(t.worker.startSpreadS ?? 0),
      naive_e2e_per_s: Math.round(cluster.naive.perSecond),
      sluice_e2e_per_s: Math.round(cluster.e2e.perSecond),
      publish_r3_sqlite_cluster_per_s: Math.round(cluster.publish.perSecond),
      postgres_e2e_per_s: Math.round(r.sinks.postgres.e2e.perSecond),
      publish_r3_postgres_cluster_per_s: Math.round(r.sinks.postgres.publish.perSecond),
      naive_postgres_e2e_per_s: Math.round(r.sinks.postgres.naive?.perSecond ?? 0),
      ack_only_per_s: Math.round(r.sinks.postgres.ackOnly?.ackOnly.perSecond ?? 0),
      publish_r3_ack_only_per_s: Math.round(r.sinks.postgres.ackOnly?.publish.perSecond ?? 0),
      sqlite_append_per_s: Math.round(r.merge.append.perSecond),
      sqlite_merge_per_s: Math.round(r.merge.merge.perSecond),
      jetstream_e2e_per_s: Math.round(r.sinks.jetstream.e2e.perSecond),
      publish_r3_jetstream_cluster_per_s: Math.round(r.sinks.jetstream.publish.perSecond),
    },
    durability: {
      producer_replicated_per_s: Math.round(r.durability.replicated.perSecond),
      producer_fsync_per_s: Math.round(r.durability.fsync.perSecond),
    },
    tracing: {
      off_per_s: Math.round(t.tracing.off.perSecond),
      sampled_1pct_per_s: Math.round(t.tracing.sampled.perSecond),
      always_on_per_s: Math.round(t.tracing.alwaysOn.perSecond),
      sampled_vs_off: round(t.tracing.ratios.sampled, 2),
      always_on_vs_off: round(t.tracing.ratios.alwaysOn, 2),
    },
    latency: {
      rate_per_s: cluster.latency.rate,
      records: cluster.latency.records,
      publish_to_commit_p50_ms: cluster.latency.p50Ms,
      publish_to_commit_p99_ms: cluster.latency.p99Ms,
      publish_to_commit_max_ms: cluster.latency.maxMs,
    },
    failover: {
      worker_kill_trials_s: kills.map((x) => round(x)),
      worker_kill_median_s: round(median(kills)),
      worker_kill_max_s: round(Math.max(...kills)),
      leader_takeover_trials_s: cluster.leader.map((x) => round(x)),
      leader_takeover_s: round(median(cluster.leader)),
      leader_takeover_max_s: round(Math.max(...cluster.leader)),
    },
    rebalance: {
      scale_out_trials: cluster.scale.map((x) => ({
        moved: x.moved,
        moved_max_gap_s: round(x.movedMaxGapS),
        unmoved: x.unmoved,
        unmoved_max_gap_s: round(x.unmovedMaxGapS),
        unmoved_epoch_changes: x.unmovedEpochChanges,
        baseline_max_gap_s: round(x.baselineMaxGapS),
        host_steal_pct: x.hostStealPct === null ? null : round(x.hostStealPct, 1),
      })),
      scale_out_max_gap_s: round(Math.max(...gaps)),
      scale_out_median_gap_s: round(median(gaps)),
      unmoved_max_gap_s: round(Math.max(...cluster.scale.map((x) => x.unmovedMaxGapS))),
      baseline_max_gap_s: round(Math.max(...cluster.scale.map((x) => x.baselineMaxGapS))),
      unmoved_epoch_changes: cluster.scale.reduce((a, x) => a + x.unmovedEpochChanges, 0),
    },
    memory: {
      shards: 64,
      seconds: Math.round(memory.seconds),
      records: memory.records,
      stages: "normalise x5, enrich, dedupe",
      committed: memory.committed,
      rss_start_mib: round(memory.startMiB, 1),
      rss_end_mib: round(memory.endMiB, 1),
      rss_max_mib: round(memory.maxMiB, 1),
      rss_slope_second_half_mib_per_min: round(memory.slopeMiBPerMin, 2),
      rss_first_third_median_mib: round(memory.firstThirdMedianMiB, 1),
      rss_last_third_median_mib: round(memory.lastThirdMedianMiB, 1),
      worker_lost: memory.lost,
      samples: memory.samples.map((s) => [round(s.s, 1), round(s.rssMiB, 1)]),
    },
    cpu_us_per_record: {
      sqlite: r.cluster.cpu,
      postgres: r.sinks.postgres.cpu,
      jetstream: r.sinks.jetstream.cpu,
    },
    e2e_rounds: {
      sqlite: roundsOf(r.cluster),
      postgres: roundsOf(r.sinks.postgres),
      jetstream: roundsOf(r.sinks.jetstream),
    },
    ack_only_cpu_us_per_record: r.sinks.postgres.ackOnly
      ? { publish: r.sinks.postgres.ackOnly.cpu.publish, ack_only: r.sinks.postgres.ackOnly.cpu.ackOnly }
      : null,
    ack_only_rounds: {
      warmup_records: r.sinks.postgres.ackOnly?.warmup ?? 0,
      rounds: (r.sinks.postgres.ackOnly?.rounds ?? []).map((x) => ({
        publish_per_s: Math.round(x.publish),
        ack_only_per_s: Math.round(x.ackOnly),
        ratio: round(x.ackOnly / x.publish, 2),
      })),
    },
    host_steal_pct: Object.fromEntries(
      Object.entries(r.steal).map(([k, v]) => [k, v === null ? null : round(v, 1)]),
    ),
  };
}

/** An end-to-end comparison's rounds as the report lists them. */
const roundsOf = (p: Pick<EndToEndPair, "rounds" | "warmup">): BenchReport["e2e_rounds"]["sqlite"] => ({
  warmup_records: p.warmup,
  rounds: p.rounds.map((x) => ({
    publish_per_s: Math.round(x.publish),
    e2e_per_s: Math.round(x.e2e),
    ratio: round(x.e2e / x.publish, 2),
  })),
});

/** The table row under an end-to-end figure: CPU per record of both rounds, and by role end to end. */
const cpuRow = (into: string, x: EndToEndPair["cpu"]): [string, string, string, string] => [
  `  CPU per record, end to end into ${into} vs the producer alone`,
  `${x.e2e.total} vs ${x.publish.total} µs`,
  roleText(x.e2e),
  "",
];

/** The report as the table the benchmark prints: figure, measurement, ratio or result, target. */
export function reportTable(rep: BenchReport, r: BenchResults): string {
  const t = r.throughput;
  const ratios = rep.ratios;
  const steal = r.steal;
  const th = rep.throughput;
  const rows: Array<[string, string, string, string]> = [
    [
      "producer vs js.publish (R1 stream)",
      `${th.producer_r1_per_s}/s vs ${th.js_publish_r1_per_s}/s`,
      `${ratios.producer_vs_js_publish}x`,
      ">= 4x",
    ],
    [
      "producer vs js.publish (R3 stream)",
      `${th.producer_r3_per_s}/s vs ${th.js_publish_r3_per_s}/s`,
      `${ratios.producer_vs_js_publish_r3}x`,
      "",
    ],
    [
      "worker path, discarding sink vs ordered read (one stream, 16 shards)",
      `${th.null_sink_per_s}/s vs ${th.ordered_read_per_s}/s ` +
        `(${t.worker.records} records; last shard started ${th.null_sink_start_spread_s.toFixed(2)} s after the first)`,
      `${ratios.null_sink_vs_ordered_read}x`,
      ">= 0.7x",
    ],
    [
      "  its consumers alone (no decoding, no sink) vs ordered read",
      `${th.consumers_only_per_s}/s vs ${th.ordered_read_per_s}/s`,
      `${ratios.consumers_only_vs_ordered_read}x (worker path ${ratios.null_sink_vs_consumers_only}x of it)`,
      "",
    ],
    [
      "worker path with schema validation and three enforced rules vs without",
      `${th.schema_rules_per_s}/s vs ${th.null_sink_per_s}/s`,
      `${ratios.schema_vs_plain}x`,
      ">= 0.8x",
    ],
    [
      "worker path with five normalise steps, an enrichment and dedupe vs without",
      `${th.transform_stages_per_s}/s vs ${th.null_sink_per_s}/s`,
      `${ratios.stages_vs_plain}x`,
      ">= 0.7x",
    ],
    [
      "same, one stream per shard (streams: per-shard)",
      `${th.null_sink_per_shard_streams_per_s}/s vs ${th.ordered_read_per_shard_streams_per_s}/s`,
      `${ratios.null_sink_vs_ordered_read_per_shard_streams}x`,
      "",
    ],
    [
      "same, one shard (one consumer)",
      `${th.null_sink_one_shard_per_s}/s vs ${th.ordered_read_one_shard_per_s}/s`,
      `${ratios.null_sink_vs_ordered_read_one_shard}x`,
      "",
    ],
    [
      "end to end into SQLite vs naive",
      `${th.sluice_e2e_per_s}/s vs ${th.naive_e2e_per_s}/s`,
      `${ratios.e2e_vs_naive}x`,
      ">= 5x",
    ],
    [
      "end to end into SQLite vs the producer alone into R3 (same cluster)",
      `${th.sluice_e2e_per_s}/s vs ${th.publish_r3_sqlite_cluster_per_s}/s`,
      `${ratios.e2e_sqlite_vs_publish_r3}x`,
      "",
    ],
    cpuRow("SQLite", rep.cpu_us_per_record.sqlite),
    [
      "two branches into SQLite also merged (policy latest) vs appended only",
      `${th.sqlite_merge_per_s}/s vs ${th.sqlite_append_per_s}/s`,
      `${ratios.merge_vs_append}x`,
      ">= 0.6x",
    ],
    [
      "end to end into PostgreSQL vs naive (INSERT and ack per record)",
      `${th.postgres_e2e_per_s}/s vs ${th.naive_postgres_e2e_per_s}/s`,
      `${ratios.e2e_postgres_vs_naive}x`,
      ">= 10x",
    ],
    [
      "end to end into PostgreSQL vs the producer alone into R3 (same cluster)",
      `${th.postgres_e2e_per_s}/s vs ${th.publish_r3_postgres_cluster_per_s}/s`,
      `${ratios.e2e_postgres_vs_publish_r3}x`,
      ">= 0.5x",
    ],
    cpuRow("PostgreSQL", rep.cpu_us_per_record.postgres),
    [
      "  ceiling: received and acked only (3 readers as 3 workers) vs the producer alone",
      `${th.ack_only_per_s}/s vs ${th.publish_r3_ack_only_per_s}/s`,
      `${ratios.ack_only_vs_publish_r3}x`,
      "",
    ],
    ...(rep.ack_only_cpu_us_per_record
      ? [
          [
            "    CPU per record, received and acked only vs the producer alone",
            `${rep.ack_only_cpu_us_per_record.ack_only.total} vs ${rep.ack_only_cpu_us_per_record.publish.total} µs`,
            roleText(rep.ack_only_cpu_us_per_record.ack_only).replace("workers", "readers"),
            "",
          ] as [string, string, string, string],
        ]
      : []),
    [
      "end to end into a JetStream output stream vs the producer alone into R3",
      `${th.jetstream_e2e_per_s}/s vs ${th.publish_r3_jetstream_cluster_per_s}/s`,
      `${ratios.e2e_jetstream_vs_publish_r3}x`,
      "",
    ],
    cpuRow("the output stream", rep.cpu_us_per_record.jetstream),
    [
      "producer into R3 with fsync before each PubAck vs without",
      `${rep.durability.producer_fsync_per_s}/s vs ${rep.durability.producer_replicated_per_s}/s`,
      `${ratios.producer_fsync_vs_replicated}x`,
      "",
    ],
    [
      "secured cluster (TLS, users, encrypted store) vs --insecure: producer / end to end",
      `${Math.round(median(r.security.producer.secured))}/s vs ${Math.round(median(r.security.producer.insecure))}/s; ${Math.round(median(r.security.e2e.secured))}/s vs ${Math.round(median(r.security.e2e.insecure))}/s`,
      `${ratios.producer_secured_vs_insecure}x, ${ratios.e2e_secured_vs_insecure}x`,
      "",
    ],
    [
      "producer with tracing: 1 % sampled / always on vs off",
      `${rep.tracing.sampled_1pct_per_s}/s, ${rep.tracing.always_on_per_s}/s vs ${rep.tracing.off_per_s}/s`,
      `${rep.tracing.sampled_vs_off}x, ${rep.tracing.always_on_vs_off}x`,
      "",
    ],
    [
      "publish to commit latency",
      `at ${rep.latency.rate_per_s}/s`,
      `p50 ${rep.latency.publish_to_commit_p50_ms} ms, p99 ${rep.latency.publish_to_commit_p99_ms} ms`,
      "",
    ],
    [
      "worker SIGKILL to commits elsewhere",
      `${rep.failover.worker_kill_trials_s.length} trials`,
      `median ${rep.failover.worker_kill_median_s} s, max ${rep.failover.worker_kill_max_s} s (host steal ${stealText(steal.worker_kill)})`,
      "<= 1.5 s, <= 3 s",
    ],
    [
      "scale-out 3 -> 4, moved shards' commit gap",
      `${rep.rebalance.scale_out_trials.length} trials`,
      `max ${rep.rebalance.scale_out_max_gap_s} s (median ${rep.rebalance.scale_out_median_gap_s} s; host steal ${stealText(steal.scale_out)})`,
      "<= 0.3 s",
    ],
    [
      "scale-out, shards not moved",
      "longest commit gap (without a join), epoch changes",
      `${rep.rebalance.unmoved_max_gap_s} s (${rep.rebalance.baseline_max_gap_s} s), ${rep.rebalance.unmoved_epoch_changes}`,
      "never paused",
    ],
    [
      "leader coordinator SIGKILL to new leader acting",
      `${rep.failover.leader_takeover_trials_s.length} trials`,
      `median ${rep.failover.leader_takeover_s} s, max ${rep.failover.leader_takeover_max_s} s (host steal ${stealText(steal.leader_kill)})`,
      "<= 2 s",
    ],
    [
      "worker RSS, 64 shards, full load",
      `${rep.memory.seconds} s, ${rep.memory.records} records`,
      `median ${rep.memory.rss_first_third_median_mib.toFixed(0)} MiB first third, ${rep.memory.rss_last_third_median_mib.toFixed(0)} MiB last third (max ${rep.memory.rss_max_mib.toFixed(0)}); worker lost ${rep.memory.worker_lost}x`,
      "flat",
    ],
  ];
  const w = [0, 1, 2].map((i) => Math.max(...rows.map((row) => row[i]!.length)));
  return rows
    .map((row) => `${row[0].padEnd(w[0]!)}  ${row[1].padEnd(w[1]!)}  ${row[2].padEnd(w[2]!)}  ${row[3]}`)
    .join("\n");
}
