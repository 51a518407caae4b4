/**
 * The ports of a simulated node, served over `SimNet` by the in-memory broker and sink.
 * These are the same interfaces the NATS and SQLite adapters implement, so the worker and
 * coordinator runtimes under simulation are the production ones.
 */

import type { MemorySink } from "../../adapters/sink/memory-sink.js";
import { ErrorCode, isSluiceError, SluiceError } from "../../contract/errors.js";
import type { Heartbeat, ShardRef } from "../../contract/ownership.js";
import type {
  AssignedNotice,
  Checkpoint,
  CommitOptions,
  CommitResult,
  CoordinatorControlBus,
  DeadLetter,
  DeadLetterQueue,
  FeedFlow,
  FeedStart,
  Grants,
  JsonStore,
  ReleasedNotice,
  ShardFeed,
  ShardSource,
  Sink,
  SinkRow,
  SourceMessage,
  Versioned,
  WorkerControlBus,
} from "../../contract/ports.js";
import { consumerEpoch, consumerName, shardFilter } from "../../contract/wire.js";
import { takeGroup, type WaitingCommit } from "../../core/commit-group.js";
import type { MemoryKv, MemoryStream } from "../memory-broker.js";
import type { SimNode } from "./sim-loop.js";
import type { SimNet } from "./sim-net.js";

const REQUEST_TIMEOUT_MS = 1_000;

export class SimJsonStore<T> implements JsonStore<T> {
  constructor(
    private readonly net: SimNet,
    private readonly self: SimNode,
    private readonly broker: SimNode,
    private readonly kv: MemoryKv,
    /** Whether this node's watch can see phantom writes (like one on the failing server). */
    private readonly seesPhantoms = false,
  ) {}

  get(key: string): Promise<Versioned<T>> {
    return this.net.request(this.self, this.broker, () => parse<T>(this.kv.get(key)), REQUEST_TIMEOUT_MS);
  }

  compareAndSet(key: string, value: T, expectedRevision: number): Promise<number> {
    const text = JSON.stringify(value);
    return this.net.request(
      this.self,
      this.broker,
      () => this.kv.compareAndSet(key, text, expectedRevision),
      REQUEST_TIMEOUT_MS,
    );
  }

  put(key: string, value: T): Promise<number> {
    const text = JSON.stringify(value);
    return this.net.request(this.self, this.broker, () => this.kv.put(key, text), REQUEST_TIMEOUT_MS);
  }

  async watch(onValue: (key: string, v: Versioned<T>) => void): Promise<{ stop(): void }> {
    const inc = this.self.incarnation;
    let stopped = false;
    const unwatch = this.kv.watch((key, e) => {
      if (stopped || this.self.incarnation !== inc) {
        unwatchLater();
        return;
      }
      this.net.send(this.broker, this.self, () => onValue(key, parse<T>(e)), false);
    }, this.seesPhantoms);
    const unwatchLater = (): void => {
      stopped = true;
      queueMicrotask(unwatch);
    };
    return { stop: unwatchLater };
  }
}

function parse<T>(e: { value: string | null; revision: number }): Versioned<T> {
  return { value: e.value === null ? null : (JSON.parse(e.value) as T), revision: e.revision };
}

export class SimShardSource implements ShardSource {
  constructor(
    private readonly net: SimNet,
    private readonly self: SimNode,
    private readonly broker: SimNode,
    private readonly stream: MemoryStream,
    private readonly settings: { maxAckPending: number; ackWaitMs: number },
  ) {}

  async open(ref: ShardRef, epoch: number, start: FeedStart, flow?: FeedFlow): Promise<ShardFeed> {
    const name = consumerName(ref.pipeline, ref.shard, epoch);
    // The simulated stream keeps no store times: a rewind by time starts from the beginning.
    const fromSeq = "seq" in start ? start.seq : 1;
    await this.net.request(
      this.self,
      this.broker,
      () => {
        this.stream.deleteConsumer(name);
        this.stream.addConsumer(
          name,
          shardFilter(ref.pipeline, ref.shard),
          fromSeq,
          flow?.maxAckPending ?? this.settings.maxAckPending,
          this.settings.ackWaitMs,
        );
      },
      REQUEST_TIMEOUT_MS,
    );
    return new SimShardFeed(this.net, this.self, this.broker, this.stream, name);
  }

  removeOlderEpochs(ref: ShardRef, epoch: number): Promise<void> {
    return this.net.request(
      this.self,
      this.broker,
      () => {
        for (const n of this.stream.consumerNames()) {
          const e = consumerEpoch(ref.pipeline, ref.shard, n);
          if (e !== null && e < epoch) this.stream.deleteConsumer(n);
        }
      },
      REQUEST_TIMEOUT_MS,
    );
  }

  remove(ref: ShardRef, epoch: number): Promise<void> {
    const name = consumerName(ref.pipeline, ref.shard, epoch);
    return this.net.request(
      this.self,
      this.broker,
      () => void this.stream.deleteConsumer(name),
      REQUEST_TIMEOUT_MS,
    );
  }
}

class SimShardFeed implements ShardFeed {
  failure: Error | null = null;
  private closed = false;

  constructor(
    private readonly net: SimNet,
    private readonly self: SimNode,
    private readonly broker: SimNode,
    private readonly stream: MemoryStream,
    private readonly name: string,
  ) {}

  async next(max: number, waitMs: number): Promise<SourceMessage[]> {
    if (this.failure) throw this.failure;
    let msgs: SourceMessage[];
    try {
      msgs = await this.net.request(
        this.self,
        this.broker,
        () => this.stream.pull(this.name, max, this.self.loop.now).map((m) => ({ ...m, token: m.seq })),
        REQUEST_TIMEOUT_MS,
      );
    } catch (err) {
      if (!this.closed && (err as Error).message.includes("not found")) this.failure = err as Error;
      throw err;
    }
    if (this.closed) return [];
    if (msgs.length === 0) await new Promise<void>((r) => this.self.setTimeout(r, waitMs));
    return msgs;
  }

  ack(last: SourceMessage): void {
    const seq = last.seq;
    this.net.send(this.self, this.broker, () => this.stream.ack(this.name, seq));
  }

  async close(): Promise<void> {
    this.closed = true;
    this.failure ??= new SluiceError(ErrorCode.Unavailable, "feed closed");
  }
}

export class SimDeadLetterQueue implements DeadLetterQueue {
  constructor(
    private readonly net: SimNet,
    private readonly self: SimNode,
    private readonly broker: SimNode,
    /** `pipeline.shard.seq` -> dead letter; keyed like the real message id, so re-publishing dedups. */
    private readonly store: Map<string, DeadLetter>,
  ) {}

  publish(entries: DeadLetter[]): Promise<void> {
    return this.net.request(
      this.self,
      this.broker,
      () => {
        for (const d of entries) {
          const key = `${d.ref.pipeline}.${d.ref.shard}.${d.seq}`;
          if (!this.store.has(key)) this.store.set(key, d);
        }
      },
      REQUEST_TIMEOUT_MS,
    );
  }
}

/** A commit waiting for its group's request (`SimSinkClient`'s group commit), sent at `sentAt`. */
interface SimWaitingCommit extends WaitingCommit {
  sentAt: number;
}

/** Called on the sink side when the fence rejects a commit, with the time it was sent. */
export type FencedTap = (sentAt: number, ref: ShardRef, epoch: number, worker: string) => void;

export class SimSinkClient implements Sink {
  constructor(
    private readonly net: SimNet,
    private readonly self: SimNode,
    private readonly sinkNode: SimNode,
    private readonly sink: MemorySink,
    private readonly onFenced?: FencedTap,
    /** Returns true to freeze the node now, before this commit leaves it (a fault). */
    private readonly holdNextCommit?: () => boolean,
    /**
     * Decide duplicates when the commit is sent, against marks kept outside the transaction, as
     * a cache beside the sink would (`SafetySwitches.dedupeInTransaction` off).
     */
    private readonly dedupeOutside = false,
    /**
     * Group commit, as `PostgresSink` does it: while one request is in flight, commits wait,
     * and the next request carries every commit waiting then (`takeGroup`), applied in one
     * step on the sink node, each by the sink rules as if alone. `fencePerShard` off (a safety
     * switch): only the group's first commit is checked against its shard's fence.
     */
    private readonly group?: { fencePerShard: boolean; onGroup?: (commits: number) => void },
  ) {}

  private waiting: SimWaitingCommit[] = [];
  private groupInFlight = false;

  fence(ref: ShardRef, epoch: number): Promise<Checkpoint> {
    return this.net.request(
      this.self,
      this.sinkNode,
      () => this.sink.fenceSync(ref, epoch),
      2 * REQUEST_TIMEOUT_MS,
    );
  }

  commit(
    ref: ShardRef,
    epoch: number,
    worker: string,
    rows: SinkRow[],
    lastSeq: number,
    opts: CommitOptions = {},
  ): Promise<CommitResult> {
    const sentAt = this.self.loop.now;
    if (this.dedupeOutside && opts.dedupeWindowMs !== undefined) {
      rows = this.sink.markOutside(ref, rows, opts.dedupeWindowMs);
      const { dedupeWindowMs: _, ...rest } = opts;
      opts = rest;
    }
    if (this.holdNextCommit?.()) {
      // Frozen after the lease check with the write still in the client's buffer: it leaves
      // when the process runs again (the textbook zombie write).
      return new Promise<void>((r) => this.self.setTimeout(r, 0)).then(() =>
        this.send(sentAt, ref, epoch, worker, rows, lastSeq, opts),
      );
    }
    return this.send(sentAt, ref, epoch, worker, rows, lastSeq, opts);
  }

  private send(
    sentAt: number,
    ref: ShardRef,
    epoch: number,
    worker: string,
    rows: SinkRow[],
    lastSeq: number,
    opts: CommitOptions,
  ): Promise<CommitResult> {
    if (this.group) {
      return new Promise<CommitResult>((resolve, reject) => {
        this.waiting.push({ sentAt, ref, epoch, worker, rows, lastSeq, opts, resolve, reject });
        this.sendGroup();
      });
    }
    return this.net.request(
      this.self,
      this.sinkNode,
      () => {
        try {
          return this.sink.commitSync(ref, epoch, worker, rows, lastSeq, opts);
        } catch (err) {
          if (isSluiceError(err, ErrorCode.Fenced)) this.onFenced?.(sentAt, ref, epoch, worker);
          throw err;
        }
      },
      2 * REQUEST_TIMEOUT_MS,
    );
  }

  /** Sends the next group when none is in flight; each commit gets its own outcome. */
  private sendGroup(): void {
    if (this.groupInFlight || this.waiting.length === 0) return;
    const group = takeGroup(this.waiting);
    this.group?.onGroup?.(group.length);
    this.groupInFlight = true;
    const checkAll = this.group?.fencePerShard !== false;
    this.net
      .request(
        this.self,
        this.sinkNode,
        () =>
          group.map((q, i): { ok: true; r: CommitResult } | { ok: false; err: unknown } => {
            try {
              const rules = checkAll || i === 0 ? undefined : { fence: false };
              return {
                ok: true,
                r: this.sink.commitSync(q.ref, q.epoch, q.worker, q.rows, q.lastSeq, q.opts, rules),
              };
            } catch (err) {
              if (isSluiceError(err, ErrorCode.Fenced)) this.onFenced?.(q.sentAt, q.ref, q.epoch, q.worker);
              return { ok: false, err };
            }
          }),
        2 * REQUEST_TIMEOUT_MS,
      )
      .then(
        (outcomes) => {
          group.forEach((q, i) => {
            const o = outcomes[i]!;
            if (o.ok) q.resolve(o.r);
            else q.reject(o.err);
          });
        },
        (err: unknown) => {
          for (const q of group) q.reject(err);
        },
      )
      .finally(() => {
        this.groupInFlight = false;
        this.sendGroup();
      });
  }

  checkpoint(ref: ShardRef): Promise<Checkpoint> {
    return this.net.request(
      this.self,
      this.sinkNode,
      () => this.sink.checkpointSync(ref),
      REQUEST_TIMEOUT_MS,
    );
  }

  recordIds(ref: ShardRef, fromSeq: number): Promise<string[]> {
    return this.net.request(
      this.self,
      this.sinkNode,
      () => this.sink.recordIdsSync(ref, fromSeq),
      REQUEST_TIMEOUT_MS,
    );
  }

  async close(): Promise<void> {}
}

type HeartbeatHandler = (hb: Heartbeat, reply: (g: Grants) => void) => void;
type ReleasedHandler = (n: ReleasedNotice) => void;
type AssignedHandler = (n: AssignedNotice) => void;

/** Subscriptions on the broker's core-NATS subjects: who hears heartbeats and releases. */
export class SimControlPlane {
  readonly heartbeat = new Map<SimNode, { inc: number; handler: HeartbeatHandler }>();
  readonly released = new Map<SimNode, { inc: number; handler: ReleasedHandler }>();
  readonly assigned = new Map<SimNode, { inc: number; handler: AssignedHandler }>();
}

export class SimWorkerBus implements WorkerControlBus {
  constructor(
    private readonly net: SimNet,
    private readonly self: SimNode,
    private readonly plane: SimControlPlane,
  ) {}

  heartbeat(hb: Heartbeat, timeoutMs: number): Promise<Grants | null> {
    const text = JSON.stringify(hb);
    return new Promise((resolve) => {
      let done = false;
      const timer = this.self.setTimeout(() => {
        if (!done) {
          done = true;
          resolve(null);
        }
      }, timeoutMs);
      for (const [node, sub] of this.plane.heartbeat) {
        if (node.incarnation !== sub.inc) continue;
        this.net.send(this.self, node, () =>
          sub.handler(JSON.parse(text) as Heartbeat, (g) => {
            const reply = JSON.stringify(g);
            this.net.send(node, this.self, () => {
              if (done) return;
              done = true;
              this.self.clearTimeout(timer);
              resolve(JSON.parse(reply) as Grants);
            });
          }),
        );
      }
    });
  }

  released(notice: ReleasedNotice): void {
    for (const [node, sub] of this.plane.released) {
      if (node.incarnation !== sub.inc) continue;
      this.net.send(this.self, node, () => sub.handler({ ...notice }));
    }
  }

  onReleased(handler: ReleasedHandler): () => void {
    const sub = { inc: this.self.incarnation, handler };
    this.plane.released.set(this.self, sub);
    return () => {
      if (this.plane.released.get(this.self) === sub) this.plane.released.delete(this.self);
    };
  }

  onAssigned(handler: AssignedHandler): () => void {
    const sub = { inc: this.self.incarnation, handler };
    this.plane.assigned.set(this.self, sub);
    return () => {
      if (this.plane.assigned.get(this.self) === sub) this.plane.assigned.delete(this.self);
    };
  }
}

export class SimCoordinatorBus implements CoordinatorControlBus {
  constructor(
    private readonly net: SimNet,
    private readonly self: SimNode,
    private readonly plane: SimControlPlane,
  ) {}

  onHeartbeat(handler: HeartbeatHandler): void {
    this.plane.heartbeat.set(this.self, { inc: this.self.incarnation, handler });
  }

  onReleased(handler: ReleasedHandler): void {
    this.plane.released.set(this.self, { inc: this.self.incarnation, handler });
  }

  assigned(n: AssignedNotice): void {
    const text = JSON.stringify(n);
    for (const [node, sub] of this.plane.assigned) {
      if (node.incarnation !== sub.inc) continue;
      this.net.send(this.self, node, () => sub.handler(JSON.parse(text) as AssignedNotice));
    }
  }

  async close(): Promise<void> {
    this.plane.heartbeat.delete(this.self);
    this.plane.released.delete(this.self);
  }
}
