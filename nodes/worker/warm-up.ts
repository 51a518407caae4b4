/**
 * A worker's data path, run once on in-memory ports before the worker joins the cluster.
 *
 * A new process meets every function of that path for the first time at its first lease:
 * V8 compiles each lazily on its first call and its inline caches start empty. On a worker
 * joining a loaded 2-core cluster that cost 75–220 ms on its first lease, measured from the
 * grant to the lease's first state, and it lands on the hand-off's critical path (the shard
 * moving there commits nothing meanwhile), delaying the leases granted after it as well.
 *
 * The warm-up plays one graceful hand-off through a real `WorkerRuntime`: a lease granted,
 * fenced, fed and committed in batches, revoked and drained; then the same shard announced as
 * moving here, prepared (consumer opened at the checkpoint), fenced early on the previous
 * owner's release, granted at the next epoch, committed past the skipped records, and
 * released. Nothing leaves the process: assignments, heartbeats, source and sink are
 * in-memory, and it runs before telemetry starts, so it emits no span or metric.
 */

import { MemorySink } from "../../shared/adapters/sink/memory-sink.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import type { TimingConfig, WorkerConfig } from "../../shared/contract/config.js";
import { silentLogger } from "../../shared/contract/logger.js";
import type { AssignmentEntry, ShardRef } from "../../shared/contract/ownership.js";
import type {
  AssignmentStore,
  FeedStart,
  Grants,
  ReleasedNotice,
  Scheduler,
  ShardFeed,
  ShardSource,
  SourceMessage,
  Versioned,
  WorkerControlBus,
} from "../../shared/contract/ports.js";
import { Headers, shardSubject } from "../../shared/contract/wire.js";
import { WorkerRuntime } from "../../shared/runtime/worker-runtime.js";

export interface WarmUpOptions {
  timing: TimingConfig;
  settings: WorkerConfig;
  scheduler: Scheduler;
  /** Records committed in each of the two leases. */
  recordsPerLease?: number;
  /** Gives up (the worker then joins cold) after this long, ms. */
  deadlineMs?: number;
}

export interface WarmUpResult {
  /** Records the warm-up committed. */
  records: number;
  /** False when the deadline passed first. */
  completed: boolean;
}

const PIPELINE = "sluice_warm_up";
const SELF = "warm-up";
const PEER = "warm-up-peer";
const SHARD_KEY = `${PIPELINE}.0`;

/** Plays a graceful hand-off on in-memory ports (see the module comment). Never rejects. */
export async function warmUpWorker(o: WarmUpOptions): Promise<WarmUpResult> {
  const per = o.recordsPerLease ?? 600;
  const source = new WarmUpSource(o.scheduler);
  const assignments = new WarmUpAssignments(o.scheduler);
  const bus = new WarmUpBus();
  const sink = new MemorySink();
  let committed = 0;
  let onCommitted: (() => void) | null = null;
  const runtime = new WorkerRuntime({
    id: SELF,
    capacity: 1,
    assignments,
    bus,
    sink,
    source,
    deadLetters: { publish: async () => {} },
    scheduler: o.scheduler,
    timing: o.timing,
    settings: o.settings,
    log: silentLogger,
    shardsOf: (p) => (p === PIPELINE ? 1 : undefined),
    onBatch: (r) => {
      committed += r.committed;
      onCommitted?.();
    },
  });
  const until = (what: () => boolean): Promise<void> =>
    new Promise((resolve) => {
      const check = (): void => {
        if (!what()) return;
        onCommitted = null;
        bus.onRelease = null;
        resolve();
      };
      onCommitted = check;
      bus.onRelease = check;
      check();
    });
  const play = async (): Promise<void> => {
    await runtime.start();
    // A lease of its own: granted, fed, committed, revoked, drained, released.
    source.append(per);
    assignments.emit({ owner: SELF, epoch: 1, phase: "active" });
    await until(() => committed >= per);
    assignments.emit({ owner: SELF, epoch: 1, phase: "revoking" });
    await until(() => bus.releases.some((n) => n.epoch === 1));
    // The same shard moving here from a peer: prepared, fenced early, granted, committed.
    assignments.emit({ owner: PEER, epoch: 1, phase: "revoking", next: SELF });
    source.append(per);
    bus.hear({ worker: PEER, shard: SHARD_KEY, epoch: 1 });
    assignments.emit({ owner: SELF, epoch: 2, phase: "active" });
    await until(() => committed >= 2 * per);
    assignments.emit({ owner: SELF, epoch: 2, phase: "revoking" });
    await until(() => bus.releases.some((n) => n.epoch === 2));
  };
  let timer: unknown;
  const deadline = new Promise<false>((resolve) => {
    timer = o.scheduler.setTimeout(() => resolve(false), o.deadlineMs ?? 5_000);
  });
  try {
    const completed = await Promise.race([play().then(() => true as const), deadline]);
    return { records: committed, completed };
  } catch {
    return { records: committed, completed: false };
  } finally {
    o.scheduler.clearTimeout(timer);
    runtime.stopNow();
    source.closeAll();
  }
}

/** One shard's assignment, written by the warm-up entry by entry. */
class WarmUpAssignments implements AssignmentStore {
  private onValue: ((key: string, v: Versioned<AssignmentEntry>) => void) | undefined;
  private revision = 0;
  private current: Versioned<AssignmentEntry> = { value: null, revision: 0 };
  constructor(private readonly scheduler: Scheduler) {}
  emit(entry: Omit<AssignmentEntry, "at">): void {
    const value = { ...entry, at: this.scheduler.now() };
    this.current = { value, revision: ++this.revision };
    this.onValue?.(SHARD_KEY, this.current);
  }
  async get(): Promise<Versioned<AssignmentEntry>> {
    return this.current;
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

/** Grants whatever the worker holds; hands its releases to the warm-up. */
class WarmUpBus implements WorkerControlBus {
  readonly releases: ReleasedNotice[] = [];
  onRelease: (() => void) | null = null;
  private handler: ((n: ReleasedNotice) => void) | null = null;
  async heartbeat(hb: { held: Record<string, number> }): Promise<Grants> {
    return { leader: "warm-up", term: 1, grants: hb.held };
  }
  released(n: ReleasedNotice): void {
    this.releases.push(n);
    this.onRelease?.();
  }
  onReleased(handler: (n: ReleasedNotice) => void): () => void {
    this.handler = handler;
    return () => (this.handler = null);
  }
  /** A release notice from another worker. */
  hear(n: ReleasedNotice): void {
    this.handler?.(n);
  }
}

/** The shard's records as the JetStream adapter presents them, with their real encoding. */
class WarmUpSource implements ShardSource {
  private readonly messages: SourceMessage[] = [];
  private readonly feeds = new Set<WarmUpFeed>();
  constructor(private readonly scheduler: Scheduler) {}
  append(count: number): void {
    const base = this.messages.length;
    for (let i = 0; i < count; i++) {
      const seq = base + i + 1;
      const id = `warm-up-${seq}`;
      const key = `k${seq % 64}`;
      const headers: Record<string, string> = { [Headers.msgId]: id };
      this.messages.push({
        seq,
        deliverySeq: 0,
        subject: shardSubject(PIPELINE, 0, key),
        data: encodeRecord({ id, key, n: seq, at: 0, body: "warm-up" }),
        headers,
        header: (name) => headers[name],
        timestampMs: 0,
        token: null,
      });
    }
    for (const f of this.feeds) f.wake();
  }
  async open(_ref: ShardRef, _epoch: number, start: FeedStart): Promise<ShardFeed> {
    const from = "seq" in start ? start.seq : 1;
    const feed = new WarmUpFeed(this.messages, from, this.scheduler, (f) => this.feeds.delete(f));
    this.feeds.add(feed);
    return feed;
  }
  async removeOlderEpochs(): Promise<void> {}
  async remove(): Promise<void> {}
  closeAll(): void {
    for (const f of [...this.feeds]) void f.close();
  }
}

class WarmUpFeed implements ShardFeed {
  failure: Error | null = null;
  private delivered = 0;
  private waiting: (() => void) | null = null;
  constructor(
    private readonly messages: SourceMessage[],
    private position: number,
    private readonly scheduler: Scheduler,
    private readonly closed: (f: WarmUpFeed) => void,
  ) {}
  async next(max: number, waitMs: number): Promise<SourceMessage[]> {
    if (this.position > this.messages.length) {
      await new Promise<void>((resolve) => {
        const t = this.scheduler.setTimeout(resolve, Math.min(waitMs, 50));
        this.waiting = () => {
          this.scheduler.clearTimeout(t);
          resolve();
        };
      });
      this.waiting = null;
    }
    const out: SourceMessage[] = [];
    while (out.length < max && this.position <= this.messages.length) {
      const m = this.messages[this.position - 1]!;
      this.position++;
      out.push({ ...m, deliverySeq: ++this.delivered, pending: this.messages.length - m.seq });
    }
    return out;
  }
  ack(): void {}
  wake(): void {
    this.waiting?.();
  }
  async close(): Promise<void> {
    this.wake();
    this.closed(this);
  }
}
