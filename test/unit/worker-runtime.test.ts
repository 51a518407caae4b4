import { afterEach, describe, expect, it } from "vitest";
import { waitUntil } from "../../nodes/cli/wait.js";
import { MemorySink } from "../../shared/adapters/sink/memory-sink.js";
import { parseConfig } from "../../shared/contract/config.js";
import { silentLogger } from "../../shared/contract/logger.js";
import type { AssignmentEntry, Heartbeat, ShardRef } from "../../shared/contract/ownership.js";
import type {
  AssignedNotice,
  AssignmentStore,
  FeedStart,
  ReleasedNotice,
  ShardFeed,
  ShardSource,
  SourceMessage,
  Versioned,
} from "../../shared/contract/ports.js";
import { systemScheduler } from "../../shared/contract/ports.js";
import { type FenceReport, WorkerRuntime } from "../../shared/runtime/worker-runtime.js";

const SHARD = "demo.3";

/** An assignment store whose watch the test drives entry by entry. */
class ScriptedStore implements AssignmentStore {
  private onValue: ((key: string, v: Versioned<AssignmentEntry>) => void) | undefined;
  private revision = 0;
  emit(key: string, value: AssignmentEntry, revision = ++this.revision): void {
    this.onValue?.(key, { value, revision });
  }
  async get(): Promise<Versioned<AssignmentEntry>> {
    return { value: null, revision: 0 };
  }
  async watch(onValue: (key: string, v: Versioned<AssignmentEntry>) => void) {
    this.onValue = onValue;
    return { stop: () => (this.onValue = undefined) };
  }
  async compareAndSet(): Promise<number> {
    throw new Error("workers never write assignments");
  }
  async put(): Promise<number> {
    throw new Error("workers never write assignments");
  }
}

/** A source that records which consumers were opened, closed and removed; its feeds stay empty. */
class RecordingSource implements ShardSource {
  opened: Array<{ epoch: number; start: FeedStart }> = [];
  closed: number[] = [];
  removed: number[] = [];
  async open(_ref: ShardRef, epoch: number, start: FeedStart): Promise<ShardFeed> {
    this.opened.push({ epoch, start });
    const closed = this.closed;
    return {
      failure: null,
      async next(_max: number, waitMs: number): Promise<SourceMessage[]> {
        await new Promise((r) => setTimeout(r, Math.min(waitMs, 5)));
        return [];
      },
      ack() {},
      async close() {
        closed.push(epoch);
      },
    };
  }
  async removeOlderEpochs(): Promise<void> {}
  async remove(_ref: ShardRef, epoch: number): Promise<void> {
    this.removed.push(epoch);
  }
}

describe("WorkerRuntime: a graceful hand-off is prepared while the previous owner drains", () => {
  let runtime: WorkerRuntime | undefined;
  afterEach(() => {
    runtime?.stopNow();
    runtime = undefined;
  });

  function start(timing: { heartbeatMs?: number } = {}) {
    const cfg = parseConfig({ pipelines: [{ name: "demo", shards: 16 }], timing });
    const heartbeats: Heartbeat[] = [];
    const assignments = new ScriptedStore();
    const source = new RecordingSource();
    const fenced: number[] = [];
    let release: ((n: ReleasedNotice) => void) | undefined;
    let announce: ((n: AssignedNotice) => void) | undefined;
    const active: string[] = [];
    const released: ReleasedNotice[] = [];
    const fences: FenceReport[] = [];
    const sink = new MemorySink({ observer: { onFence: (_ref, epoch) => fenced.push(epoch) } });
    runtime = new WorkerRuntime({
      id: "w2",
      capacity: 1,
      assignments,
      bus: {
        heartbeat: async (hb) => {
          heartbeats.push(hb);
          return null;
        },
        released: (n) => released.push(n),
        onReleased: (h) => {
          release = h;
          return () => (release = undefined);
        },
        onAssigned: (h) => {
          announce = h;
          return () => (announce = undefined);
        },
      },
      sink,
      source,
      deadLetters: { publish: async () => {} },
      scheduler: systemScheduler,
      timing: cfg.timing,
      settings: cfg.worker,
      log: silentLogger,
      onLeaseEvent: (e) => {
        if (e.event === "active") active.push(`${e.shard}@${e.epoch}`);
      },
      onFence: (f) => fences.push(f),
    });
    return {
      assignments,
      source,
      fenced,
      release: (n: ReleasedNotice) => release?.(n),
      announce: (n: AssignedNotice) => announce?.(n),
      active,
      released,
      heartbeats,
      fences,
      started: runtime.start(),
    };
  }

  /** Started, with shard 3 revoked from w1 for this worker, and its consumer prepared. */
  async function movingHere() {
    const w = start();
    await w.started;
    w.assignments.emit(SHARD, { owner: "w1", epoch: 4, phase: "revoking", next: "w2", at: 0 });
    await waitUntil("the prepared consumer", 3_000, () => w.source.opened.length === 1 || undefined, 2);
    return w;
  }

  it("opens the next epoch's consumer on the revoking entry, and the granted lease uses it", async () => {
    const { assignments, source, fenced } = await movingHere();
    expect(source.opened).toEqual([{ epoch: 5, start: { seq: 1 } }]);
    expect(runtime!.heldShards()).toEqual({});

    assignments.emit(SHARD, { owner: "w2", epoch: 5, phase: "active", at: 0 });
    await waitUntil("the fence at epoch 5", 3_000, () => fenced.includes(5) || undefined, 2);
    expect(runtime!.heldShards()).toEqual({ [SHARD]: 5 });
    // Only the prepared consumer: the lease did not open a second one.
    expect(source.opened).toHaveLength(1);
    expect(source.removed).toEqual([]);
  });

  it("prepares when a move is announced (an active entry naming it next) and reports it in a heartbeat at once", async () => {
    // Heartbeats 10 s apart: only the prompt one can report the preparation within the test.
    const { assignments, source, heartbeats, started } = start({ heartbeatMs: 10_000 });
    await started;
    await waitUntil("the first heartbeat", 3_000, () => heartbeats.length === 1 || undefined, 2);
    expect(heartbeats[0]!.prepared).toEqual({});
    assignments.emit(SHARD, { owner: "w1", epoch: 4, phase: "active", next: "w2", at: 0 });
    const hb = await waitUntil(
      "a heartbeat reporting the shard prepared",
      3_000,
      () => heartbeats.find((h) => h.prepared?.[SHARD] === 5),
      2,
    );
    expect(source.opened).toEqual([{ epoch: 5, start: { seq: 1 } }]);
    expect(hb.held).toEqual({});
    // The revoke that follows keeps the prepared consumer.
    assignments.emit(SHARD, { owner: "w1", epoch: 4, phase: "revoking", next: "w2", at: 0 });
    assignments.emit(SHARD, { owner: "w2", epoch: 5, phase: "active", at: 0 });
    await waitUntil("the lease of epoch 5", 3_000, () => runtime!.heldShards()[SHARD] === 5 || undefined, 2);
    expect(source.opened).toHaveLength(1);
  });

  it("fences as soon as the previous owner released, so the granted lease need not", async () => {
    const { assignments, fenced, release, active, started } = start();
    await started;
    assignments.emit(SHARD, { owner: "w1", epoch: 4, phase: "revoking", next: "w2", at: 0 });
    // Another shard's release, and one of an epoch not prepared here: no fence.
    release({ worker: "w1", shard: "demo.4", epoch: 4 });
    release({ worker: "w1", shard: SHARD, epoch: 3 });
    release({ worker: "w1", shard: SHARD, epoch: 4 });
    await waitUntil("the early fence", 3_000, () => fenced.includes(5) || undefined, 2);
    expect(fenced).toEqual([5]);
    assignments.emit(SHARD, { owner: "w2", epoch: 5, phase: "active", at: 0 });
    // Active: the acquisition has finished, and it fenced nothing more.
    await waitUntil("the lease active", 3_000, () => active.includes(`${SHARD}@5`) || undefined, 2);
    expect(fenced).toEqual([5]);
  });

  it("reports a lease's fence once, naming the epoch and owner it fenced out (the audit stream's)", async () => {
    const { assignments, fences, active, started } = start();
    await started;
    assignments.emit(SHARD, { owner: "w1", epoch: 4, phase: "active", at: 0 });
    // w1 failed: the shard comes here at a higher epoch, without a hand-off.
    assignments.emit(SHARD, { owner: "w2", epoch: 6, phase: "active", at: 0 });
    await waitUntil("the lease active", 3_000, () => active.includes(`${SHARD}@6`) || undefined, 2);
    expect(fences).toEqual([
      { ref: { pipeline: "demo", shard: 3 }, epoch: 6, previous: { epoch: 4, owner: "w1" } },
    ]);
  });

  it("drops the prepared consumer when the move is called off", async () => {
    const { assignments, source } = await movingHere();
    assignments.emit(SHARD, { owner: "w1", epoch: 4, phase: "active", at: 0 });
    await waitUntil("the prepared consumer removed", 3_000, () => source.removed.includes(5) || undefined, 2);
    await waitUntil("the prepared feed closed", 3_000, () => source.closed.includes(5) || undefined, 2);
    expect(runtime!.heldShards()).toEqual({});
  });

  it("keeps a consumer of the epoch the shard reached meanwhile: it may be another owner's", async () => {
    const { assignments, source } = await movingHere();
    assignments.emit(SHARD, { owner: "w3", epoch: 5, phase: "active", at: 0 });
    await waitUntil("the prepared feed closed", 3_000, () => source.closed.includes(5) || undefined, 2);
    expect(source.removed).toEqual([]);
  });

  it("ignores an active entry that arrives after its own revoking entry (an older revision)", async () => {
    const { assignments, released, started } = start();
    await started;
    // The watch delivered revision 2 (revoking) before revision 1 (active): this worker never
    // ran epoch 3, so it releases at once, and must not start the lease it has released.
    assignments.emit(SHARD, { owner: "w2", epoch: 3, phase: "revoking", next: "w1", at: 0 }, 2);
    expect(released).toEqual([{ worker: "w2", shard: SHARD, epoch: 3 }]);
    assignments.emit(SHARD, { owner: "w2", epoch: 3, phase: "active", at: 0 }, 1);
    expect(runtime!.heldShards()).toEqual({});
  });

  it("acts on an assignment the coordinator announces before the watch has it, and once only", async () => {
    const { assignments, announce, released, source, started } = start();
    await started;
    // Announced revoke of an epoch never run here: released at once; the watch's copy is ignored.
    const revoking = { owner: "w2", epoch: 3, phase: "revoking", next: "w1", at: 7 } as const;
    announce({ shard: SHARD, entry: revoking, revision: 1 });
    expect(released).toEqual([{ worker: "w2", shard: SHARD, epoch: 3 }]);
    assignments.emit(SHARD, revoking, 1);
    expect(released).toHaveLength(1);
    // An announced grant starts the lease; the watch's older entry and its own copy change nothing.
    const active = { owner: "w2", epoch: 4, phase: "active", at: 8 } as const;
    announce({ shard: SHARD, entry: active, revision: 3 });
    expect(runtime!.heldShards()).toEqual({ [SHARD]: 4 });
    assignments.emit(SHARD, { owner: "w1", epoch: 3, phase: "active", at: 6 }, 2);
    assignments.emit(SHARD, active, 3);
    expect(runtime!.heldShards()).toEqual({ [SHARD]: 4 });
    await waitUntil("the consumer of epoch 4", 3_000, () => source.opened.length === 1 || undefined, 2);
    expect(source.opened.map((o) => o.epoch)).toEqual([4]);
    expect(released).toHaveLength(1);
  });
});
