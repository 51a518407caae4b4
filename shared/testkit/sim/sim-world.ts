/**
 * One simulated cluster, driven by one seed: a broker (stream, consumers, KV), a sink,
 * coordinators and workers running the production runtimes, a producer, and a schedule of
 * faults. Everything runs on virtual time in one process.
 */

import { MemorySink } from "../../adapters/sink/memory-sink.js";
import { OutputStreamSink } from "../../adapters/sink/output-stream-sink.js";
import { encodeRecord } from "../../contract/codec.js";
import type { TimingConfig } from "../../contract/config.js";
import { silentLogger } from "../../contract/logger.js";
import { type AssignmentEntry, parseShardKey, type ShardRef } from "../../contract/ownership.js";
import type { Checkpoint, DeadLetter, JsonStore, Sink } from "../../contract/ports.js";
import { Headers, shardOf, shardSubject } from "../../contract/wire.js";
import { type RegistryValue, SchemaRegistry } from "../../pipeline/schema-registry.js";
import type { Stage } from "../../pipeline/stage.js";
import { DedupeStage } from "../../pipeline/stages/dedupe-stage.js";
import { EventTimeStage } from "../../pipeline/stages/event-time-stage.js";
import { MergeStage } from "../../pipeline/stages/merge-stage.js";
import { SchemaStage } from "../../pipeline/stages/schema-stage.js";
import { type CoordinatorRecord, CoordinatorRuntime } from "../../runtime/coordinator-runtime.js";
import { WorkerRuntime } from "../../runtime/worker-runtime.js";
import { MemoryJsonStore, MemoryKv, MemoryStream } from "../memory-broker.js";
import { MemoryOutputStream } from "../memory-output-stream.js";
import { Checker, type SimMerge } from "./checker.js";
import { ImmediateHandoffStore } from "./immediate-handoff-store.js";
import { Rng } from "./rng.js";
import { type CoordinatorProc, SimFaults, type WorkerProc } from "./sim-faults.js";
import { SimLoop, SimNode } from "./sim-loop.js";
import { BROKER, SINK, SimNet } from "./sim-net.js";
import { type SimOptions, simTiming } from "./sim-options.js";
import { SimOutputSink, SimOutputStore } from "./sim-output-ports.js";
import {
  type FencedTap,
  SimControlPlane,
  SimCoordinatorBus,
  SimDeadLetterQueue,
  SimJsonStore,
  SimShardSource,
  SimSinkClient,
  SimWorkerBus,
} from "./sim-ports.js";

export const PIPELINE = "sim";
/** The second branch of the simulated merge (`SimOptions.merge`); `sim` is the first. */
export const BRANCH = "sim2";
/** The merge both branches converge into. */
export const MERGE = "simmerge";
/** The simulated pipeline's allowed lateness (`SimOptions.eventTime`), ms. */
export const SIM_ALLOWED_LATENESS_MS = 1_000;
/**
 * With a merge, event times are whole multiples of this, ms: ties between branches and within
 * one are common, so the policy's later keys (priority, record id) decide too.
 */
const MERGE_TICK_MS = 250;

const SIM_SCHEMA_V1 = {
  type: "object",
  properties: { n: { type: "integer" }, key: { type: "string" }, amount: { type: "number" } },
  required: ["n", "key", "amount"],
};
/** Backward compatible with version 1: `amount` may also be text. */
const SIM_SCHEMA_V2 = {
  ...SIM_SCHEMA_V1,
  properties: { ...SIM_SCHEMA_V1.properties, amount: { type: ["number", "string"] } },
};

export class SimWorld {
  readonly loop = new SimLoop();
  readonly rng: Rng;
  private readonly eventRng: Rng;
  readonly net: SimNet;
  readonly broker: SimNode;
  readonly sinkNode: SimNode;
  /**
   * The input stream. With two branches it holds both pipelines' subjects (each shard's consumer
   * filters its own): their sequences never collide, so the checker finds any record by one.
   */
  readonly stream = new MemoryStream("SLUICE_IN_sim");
  readonly kvAssign = new MemoryKv();
  readonly kvCoord = new MemoryKv();
  /** The schema registry's bucket (`o.schema`). */
  readonly kvSchemas = new MemoryKv();
  readonly deadLetters = new Map<string, DeadLetter>();
  readonly sink: MemorySink;
  /** The output stream workers commit to when `o.sink` is `output-stream`. */
  readonly output: MemoryOutputStream;
  readonly plane = new SimControlPlane();
  readonly checker: Checker;
  readonly workers = new Map<string, WorkerProc>();
  readonly coordinators = new Map<string, CoordinatorProc>();
  readonly shards: string[];
  /** The pipelines running: `sim`, and `sim2` when two branches merge. */
  readonly pipelines: string[];
  /** The merge of the two branches, when `o.merge`. */
  readonly merge: SimMerge | null;
  readonly trace: string[] = [];
  readonly faults: string[] = [];
  private readonly timing: TimingConfig;
  private nextWorker = 1;
  private readonly chaos = new SimFaults(this);
  /** Dedupe runs in the transactional sink only (an output stream has no transaction for marks). */
  private get lateness(): boolean {
    return this.o.eventTime && this.o.sink === "memory";
  }

  /** A group-commit run leaves dedupe out: a commit that dedupes always goes alone (`goesAlone`). */
  private get dedupes(): boolean {
    return this.o.dedupe && this.o.sink === "memory" && !this.o.groupCommit;
  }

  /** Commits that shared a request with another shard's (group commit). */
  sharedCommits = 0;

  /** A merge needs event times, and the transactional sink for its table. */
  private get merges(): boolean {
    return this.o.merge && this.lateness;
  }

  constructor(
    readonly seed: number,
    readonly o: SimOptions,
  ) {
    this.rng = new Rng(seed);
    // Event times come from a generator of their own, so every other draw of a seed is as it was.
    this.eventRng = new Rng(seed ^ 0x5eed_e7);
    this.net = new SimNet(this.loop, this.rng);
    this.broker = new SimNode(BROKER, this.loop);
    this.sinkNode = new SimNode(SINK, this.loop);
    this.pipelines = this.merges ? [PIPELINE, BRANCH] : [PIPELINE];
    this.shards = this.pipelines.flatMap((p) => Array.from({ length: o.shards }, (_, i) => `${p}.${i}`));
    // Even seeds merge by `latest`, odd ones by `priority`: no draw, so every other one is as it was.
    this.merge = this.merges
      ? {
          name: MERGE,
          policy: seed % 2 === 0 ? "latest" : "priority",
          priorities: new Map([
            [PIPELINE, 2],
            [BRANCH, 1],
          ]),
        }
      : null;
    this.timing = {
      ...simTiming,
      leaseTtlMs: o.safety.leaseRecheck ? simTiming.leaseTtlMs : Number.POSITIVE_INFINITY,
    };
    this.checker = new Checker(
      () => this.loop.now,
      simTiming.leaseTtlMs,
      (ref, seq) => this.deadLetters.has(`${ref.pipeline}.${ref.shard}.${seq}`),
      o.eventTime && o.sink === "memory" ? SIM_ALLOWED_LATENESS_MS : undefined,
    );
    this.sink = new MemorySink({
      rules: { fence: o.safety.sinkFence },
      mergeByArrival: !o.safety.mergeByPolicy,
      now: () => this.loop.now,
      observer: {
        onFence: (ref, _epoch, after) => this.checker.onFence(ref, after),
        onCommit: (e) => {
          this.checker.onCommit(e);
          if (o.trace)
            this.log(
              `sink: ${e.worker} committed ${e.written.length} of shard ${e.ref.shard}@${e.epoch} to seq ${e.after.seq}`,
            );
        },
      },
    });
    this.output = new MemoryOutputStream({
      onAppend: (e) => {
        // A checkpoint message without a worker is a fence; any other ends a commit.
        if (e.after.worker === "") {
          this.checker.onFence(e.ref, e.after);
          return;
        }
        this.checker.onCommit({
          ref: e.ref,
          epoch: e.after.epoch,
          worker: e.after.worker,
          fencedEpoch: e.before.epoch,
          before: e.before,
          after: e.after,
          written: e.rows,
        });
        if (o.trace)
          this.log(
            `output: ${e.after.worker} appended ${e.rows.length} of shard ${e.ref.shard}@${e.after.epoch} to seq ${e.after.seq}`,
          );
      },
    });
    this.kvAssign.watch((key, e) => {
      const ref = parseShardKey(key);
      const entry = e.value ? (JSON.parse(e.value) as AssignmentEntry) : null;
      if (ref && entry) this.checker.onAssignment(key, entry.epoch, this.loop.now);
      if (o.trace && entry)
        this.log(
          `kv: ${key} -> ${entry.owner ?? "-"}@${entry.epoch} ${entry.phase}${entry.next ? ` next ${entry.next}` : ""}`,
        );
    });
  }

  log(line: string): void {
    if (this.o.trace) this.trace.push(`${String(this.loop.now).padStart(6)} ms  ${line}`);
  }

  // ---- processes -------------------------------------------------------------------

  startCoordinator(id: string, node = new SimNode(id, this.loop)): void {
    const assignments: JsonStore<AssignmentEntry> = new SimJsonStore<AssignmentEntry>(
      this.net,
      node,
      this.broker,
      this.kvAssign,
    );
    const runtime = new CoordinatorRuntime({
      id,
      shards: this.shards,
      assignments: this.o.safety.waitForRelease ? assignments : new ImmediateHandoffStore(assignments),
      control: new SimJsonStore<CoordinatorRecord>(this.net, node, this.broker, this.kvCoord),
      bus: new SimCoordinatorBus(this.net, node, this.plane),
      scheduler: node,
      timing: this.timing,
      log: silentLogger,
      tickMs: 100,
      onCommand: (c) => {
        if (c.type !== "write") return;
        // A converted revoke becomes an immediate graceful hand-off at epoch + 1.
        const epoch =
          c.entry.phase === "revoking" && !this.o.safety.waitForRelease ? c.entry.epoch + 1 : c.entry.epoch;
        this.checker.reasons.set(`${c.shard}@${epoch}`, c.reason);
        this.log(
          `${id}: ${c.reason} ${c.shard} -> ${c.entry.owner ?? "-"}@${c.entry.epoch} ${c.entry.phase}`,
        );
      },
      onLeadership: (leader, term) => this.log(`${id}: ${leader ? "leader" : "not leader"} (term ${term})`),
    });
    this.coordinators.set(id, { node, runtime });
    void runtime.start();
  }

  startWorker(id = `w${this.nextWorker++}`, node = new SimNode(id, this.loop)): string {
    // The worker reads the registry over the simulated network, as a real one reads its KV bucket.
    const registry = new SchemaRegistry(
      new SimJsonStore<RegistryValue>(this.net, node, this.broker, this.kvSchemas),
    );
    // Both branches validate against the `sim` registry subject. The order is the builder's.
    const stagesOf = (pipeline: string): Stage[] => [
      ...(this.o.schema ? [new SchemaStage(PIPELINE, registry, { now: () => node.now() })] : []),
      ...(this.lateness
        ? [
            new EventTimeStage("at", SIM_ALLOWED_LATENESS_MS, {
              watermarkInCheckpoint: this.o.safety.watermarkInCheckpoint,
            }),
          ]
        : []),
      ...(this.merge
        ? [
            new MergeStage(
              { name: this.merge.name, policy: this.merge.policy, key: "key" },
              this.merge.priorities.get(pipeline)!,
            ),
          ]
        : []),
      ...(this.dedupes ? [new DedupeStage({ key: "bk", window: 3_600_000 })] : []),
    ];
    const stages = new Map(this.pipelines.map((p) => [p, stagesOf(p)]));
    const runtime = new WorkerRuntime({
      id,
      capacity: 1,
      assignments: new SimJsonStore<AssignmentEntry>(this.net, node, this.broker, this.kvAssign, true),
      bus: new SimWorkerBus(this.net, node, this.plane),
      sink: this.workerSink(node),
      source: new SimShardSource(this.net, node, this.broker, this.stream, this.o.worker),
      deadLetters: new SimDeadLetterQueue(this.net, node, this.broker, this.deadLetters),
      scheduler: node,
      timing: this.timing,
      settings: { ...this.o.worker, deadLetterMark: this.o.safety.deadLetterMark },
      shardsOf: () => this.o.shards,
      stagesOf: (pipeline) => stages.get(pipeline),
      log: silentLogger,
      onLeaseEvent: (e) => {
        if (e.event === "acquiring") this.checker.onLeaseStart(id, e.shard, e.epoch);
        if (e.event === "released" || e.event === "fenced") this.checker.onLeaseEnd(id, e.shard, e.epoch);
        this.log(`${id}: lease ${e.shard}@${e.epoch} ${e.event}${e.reason ? ` (${e.reason})` : ""}`);
      },
    });
    this.workers.set(id, { node, runtime, leaving: false, gone: false });
    void runtime.start();
    return id;
  }

  /** A worker's sink: a client of the transactional sink node, or its own output-stream sink. */
  private workerSink(node: SimNode): Sink {
    const onFenced: FencedTap = (sentAt, ref, epoch, worker) =>
      this.checker.onReject(sentAt, ref, epoch, worker);
    if (this.o.sink === "output-stream") {
      const store = new SimOutputStore(this.net, node, this.broker, this.output);
      const rules = { fence: this.o.safety.sinkFence, expectSequence: this.o.safety.outputExpectSequence };
      return new SimOutputSink(new OutputStreamSink(store, { rules }), node, onFenced, () =>
        this.chaos.freezeOnCommit(node),
      );
    }
    return new SimSinkClient(
      this.net,
      node,
      this.sinkNode,
      this.sink,
      onFenced,
      () => this.chaos.freezeOnCommit(node),
      !this.o.safety.dedupeInTransaction,
      this.o.groupCommit
        ? {
            fencePerShard: this.o.safety.groupFencePerShard,
            onGroup: (n) => {
              if (n > 1) this.sharedCommits += n;
            },
          }
        : undefined,
    );
  }

  /** A shard's checkpoint where workers commit. */
  checkpointOf(ref: ShardRef): Checkpoint {
    if (this.o.sink === "output-stream")
      return this.output.lastCheckpoint(ref)?.checkpoint ?? { epoch: 0, seq: 0 };
    return this.sink.checkpointSync(ref);
  }

  /** Records committed so far, wherever workers commit. */
  committedCount(): number {
    if (this.o.sink === "memory") return this.sink.stored.length;
    let n = 0;
    for (let shard = 0; shard < this.o.shards; shard++)
      n += this.output.records({ pipeline: PIPELINE, shard }).length;
    return n;
  }

  liveWorkers(): WorkerProc[] {
    return [...this.workers.values()].filter((w) => !w.gone && !w.leaving);
  }

  // ---- load --------------------------------------------------------------------------

  /** Registers the schema's versions during the run (see `SimOptions.schema`). */
  scheduleSchemas(): void {
    if (!this.o.schema) return;
    const admin = new SchemaRegistry(new MemoryJsonStore<RegistryValue>(this.kvSchemas));
    const first = this.rng.int(0, 1_500);
    const second = this.rng.int(first, this.o.loadMs);
    this.loop.at(first, () => {
      void admin.register(PIPELINE, SIM_SCHEMA_V1);
      this.log("registry: version 1 registered");
    });
    this.loop.at(second, () => {
      void admin.register(PIPELINE, SIM_SCHEMA_V2);
      this.log("registry: version 2 registered");
    });
  }

  scheduleLoad(): void {
    this.loadOf(PIPELINE, "r", this.rng, this.eventRng);
    // The second branch draws from generators of its own: the first's load is as without it.
    if (this.merge) this.loadOf(BRANCH, "q", new Rng(this.seed ^ 0xb2a_2c4), new Rng(this.seed ^ 0xe7_b2));
  }

  /** `o.records` records of one pipeline, with ids `<prefix><n>`. */
  private loadOf(pipeline: string, prefix: string, rng: Rng, eventRng: Rng): void {
    for (let i = 0; i < this.o.records; i++) {
      const at = rng.int(0, this.o.loadMs - 1);
      const malformed = rng.chance(0.03);
      // Rejected by the first version, accepted by the second.
      const schemaDependent = !malformed && rng.chance(0.1);
      // Drawn from as many keys as records: about a third of the records repeat a key under a
      // record id of their own, and most keys have one record, whose loss the checker would see.
      const businessKey = this.dedupes ? `b${rng.int(0, this.o.records - 1)}` : undefined;
      const key = `k${rng.int(0, 63)}`;
      const retry = rng.chance(0.05);
      // Up to 3 s before its publish: with 1 s allowed, a good share of the records come late.
      const drawn = this.lateness ? at - eventRng.int(0, 3_000) : undefined;
      const eventTime =
        drawn !== undefined && this.merge ? Math.floor(drawn / MERGE_TICK_MS) * MERGE_TICK_MS : drawn;
      this.loop.at(at, () => {
        const shard = shardOf(key, this.o.shards);
        const id = `${prefix}${i}`;
        const data = malformed
          ? new Uint8Array([0xff, 0xfe, 0x00])
          : encodeRecord({
              n: i,
              key,
              amount: schemaDependent ? String(i) : i,
              ...(businessKey ? { bk: businessKey } : {}),
              ...(eventTime === undefined ? {} : { at: eventTime }),
            });
        const publish = () =>
          // Stored as the shared stream's subject transform stores it: the key in the subject.
          this.stream.publish(
            shardSubject(pipeline, shard, key),
            data,
            { [Headers.msgId]: id },
            this.loop.now,
          );
        const { seq } = publish();
        this.checker.onPublish({
          id,
          pipeline,
          key,
          shard,
          seq,
          malformed,
          schemaDependent,
          ...(businessKey && !malformed ? { businessKey } : {}),
          ...(eventTime === undefined || malformed ? {} : { eventTime }),
        });
        // A producer retry of a publish that landed: the duplicate window drops it.
        if (retry) this.loop.at(at + 50, () => publish());
      });
    }
  }

  // ---- faults ------------------------------------------------------------------------

  scheduleFaults(): void {
    this.chaos.schedule();
  }

  healAll(): void {
    this.chaos.healAll();
  }

  // ---- liveness ----------------------------------------------------------------------

  /** Every shard owned by a live worker, active, committed to its end; counts within 1. */
  settled(): string | null {
    const live = new Set(this.liveWorkers().map((w) => w.node.id));
    const counts = new Map<string, number>();
    for (const s of this.shards) {
      const e = this.kvAssign.get(s);
      const ref = parseShardKey(s)!;
      const entry = e.value ? (JSON.parse(e.value) as AssignmentEntry) : null;
      if (!entry?.owner || !live.has(entry.owner) || entry.phase !== "active")
        return `${s} not owned by a live worker`;
      counts.set(entry.owner, (counts.get(entry.owner) ?? 0) + 1);
      const cp = this.checkpointOf(ref);
      if (cp.seq < this.checker.lastSeqOf(s))
        return `${s} committed to ${cp.seq} of ${this.checker.lastSeqOf(s)}`;
      if (cp.epoch !== entry.epoch) return `${s} not fenced at epoch ${entry.epoch}`;
    }
    const values = [...live].map((id) => counts.get(id) ?? 0);
    if (values.length > 0 && Math.max(...values) - Math.min(...values) > 1)
      return `unbalanced: ${values.join("/")}`;
    return null;
  }
}
