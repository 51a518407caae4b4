/** What a simulated run is made of: its size, its load, its faults, and the safety switches. */
import type { TimingConfig, WorkerConfig } from "../../contract/config.js";
import type { Checker } from "./checker.js";

/**
 * Safety mechanisms the checker tests switch off one at a time, to prove the invariants
 * catch what each one prevents. Production has no such switches.
 */
export interface SafetySwitches {
  /** The sink rejects commits of a lower epoch than the shard's fence. */
  sinkFence: boolean;
  /**
   * The output-stream sink writes only if the shard's checkpoint subject has not moved since it
   * read it (JetStream's expected last subject sequence).
   */
  outputExpectSequence: boolean;
  /** A worker re-checks a lease unconfirmed for `leaseTtlMs` before committing. */
  leaseRecheck: boolean;
  /** A graceful hand-off waits for the old owner's release before the next epoch. */
  waitForRelease: boolean;
  /**
   * Before dead letters decided by a pinned schema version are published, the checkpoint
   * records how far they reach, so a newer version is pinned only past them.
   */
  deadLetterMark: boolean;
  /** The sink decides and marks duplicates inside the commit's transaction, after its checks. */
  dedupeInTransaction: boolean;
  /** A shard's watermark (its highest event time) is committed with its checkpoint. */
  watermarkInCheckpoint: boolean;
  /**
   * The sink keeps a merge row only if the policy ranks the incoming record higher; off, the
   * last record to arrive wins (an upsert without a version check).
   */
  mergeByPolicy: boolean;
  /** In a group commit, every shard's commit is checked against its own fence, as if alone. */
  groupFencePerShard: boolean;
}

export const allSafety: SafetySwitches = {
  sinkFence: true,
  outputExpectSequence: true,
  leaseRecheck: true,
  waitForRelease: true,
  deadLetterMark: true,
  dedupeInTransaction: true,
  watermarkInCheckpoint: true,
  mergeByPolicy: true,
  groupFencePerShard: true,
};

export interface SimOptions {
  shards: number;
  workers: number;
  coordinators: number;
  records: number;
  /** Records are published during [0, loadMs). */
  loadMs: number;
  /** Faults are injected during [500, healAt); everything heals at `healAt`. */
  healAt: number;
  /** After healing, the cluster must be live and balanced within this long, ms. */
  livenessMs: number;
  /** Faults injected per run, at most. */
  maxFaults: number;
  safety: SafetySwitches;
  /**
   * Where workers commit: `memory`, a fenced transactional sink (as SQLite and PostgreSQL are),
   * or `output-stream`, the JetStream output sink's design over an in-memory stream.
   */
  sink: "memory" | "output-stream";
  /**
   * Records are checked against a registry subject whose versions are registered during the
   * run: the first after up to 1.5 s (shards wait until then), a second, which also accepts
   * records the first rejects, at a random time during the load.
   */
  schema: boolean;
  /**
   * Records carry a business key, drawn so that about half repeat one under another record id,
   * and the pipeline deduplicates by it (window one hour: the whole run). Memory sink only.
   */
  dedupe: boolean;
  /**
   * Records carry an event time up to 3 s before their publish time, and the pipeline marks
   * those below its shard's watermark late (allowed lateness 1 s). Memory sink only.
   */
  eventTime: boolean;
  /**
   * A second pipeline, `sim2`, with the same shards and a load of its own, and both as branches
   * of one merge (priorities 2 and 1; policy `latest` on even seeds, `priority` on odd ones). Event
   * times fall on 250 ms ticks, so the policy's ties are common. At the end the late records are
   * reconciled. Needs `eventTime`; memory sink only.
   */
  merge: boolean;
  /**
   * Workers' commits to the transactional sink share requests, as `PostgresSink`'s group commit
   * shares transactions (see `SimSinkClient`). Memory sink only; leaves dedupe out (a commit
   * that dedupes goes alone).
   */
  groupCommit: boolean;
  trace: boolean;
  /** Worker settings; a large run polls idle shards less often. */
  worker: WorkerConfig;
}

export const defaultSimOptions: SimOptions = {
  shards: 8,
  workers: 3,
  coordinators: 2,
  records: 300,
  loadMs: 6_000,
  healAt: 7_000,
  livenessMs: 15_000,
  maxFaults: 4,
  safety: allSafety,
  sink: "memory",
  schema: true,
  dedupe: true,
  eventTime: true,
  merge: false,
  groupCommit: false,
  trace: false,
  worker: {
    batchMax: 40,
    batchMin: 4,
    targetCommitMs: 100,
    lingerMs: 0,
    maxAckPending: 200,
    // A worker owning more than 3 of the 8 shards shares this: the flow sizing runs in simulation too.
    maxBufferedRecords: 600,
    pullWaitMs: 100,
    ackWaitMs: 3_000,
  },
};

export const simTiming: TimingConfig = {
  heartbeatMs: 200,
  failureTimeoutMs: 1_000,
  leaseTtlMs: 800,
  leaderTtlMs: 1_500,
  handoffTimeoutMs: 3_000,
  prepareTimeoutMs: 1_500,
};

export interface SeedResult {
  seed: number;
  ok: boolean;
  violations: Checker["violations"];
  faults: string[];
  records: number;
  committed: number;
  fencedRejects: number;
  /** With `groupCommit`: commits that shared a request with another shard's. */
  sharedCommits: number;
  steps: number;
  virtualMs: number;
  trace: string[];
  /** With `merge`: its policy, its rows, and the late records the reconciliation applied. */
  merge?: { policy: "latest" | "priority"; rows: number; reconciled: number };
}
