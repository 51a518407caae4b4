/**
 * In-memory models of the JetStream parts sluice relies on, for simulation: a stream with
 * sequences and `Nats-Msg-Id` dedup, durable pull consumers with a subject filter, a start
 * sequence, AckPolicy all, max-ack-pending and redelivery after ack-wait; and KV buckets with
 * revisions, compare-and-set and watches. All methods are synchronous; the simulator puts a
 * network in front of them.
 */
import { ErrorCode, SluiceError } from "../contract/errors.js";
import type { JsonStore, Versioned } from "../contract/ports.js";
import { subjectMatches } from "../contract/wire.js";

export interface StoredMessage {
  seq: number;
  subject: string;
  data: Uint8Array;
  headers: Record<string, string>;
  /** When the stream stored it, ms (the caller's clock). */
  timestampMs?: number;
}

interface ConsumerState {
  /** The subjects the consumer delivers, NATS wildcards allowed (as `shardFilter`). */
  filterSubject: string;
  /** Next stream sequence to examine for first delivery. */
  cursor: number;
  maxAckPending: number;
  ackWaitMs: number;
  /** seq -> time of last delivery, in sequence order. */
  pending: Map<number, number>;
  /** Deliveries so far (the delivery sequence of the last one). */
  delivered: number;
}

export interface Delivery extends StoredMessage {
  deliverySeq: number;
}

export class MemoryStream {
  readonly messages: StoredMessage[] = [];
  private readonly ids = new Map<string, number>();
  private readonly consumers = new Map<string, ConsumerState>();

  constructor(readonly name: string) {}

  get lastSeq(): number {
    return this.messages.length;
  }

  publish(
    subject: string,
    data: Uint8Array,
    headers: Record<string, string>,
    timestampMs?: number,
  ): { seq: number; duplicate: boolean } {
    const id = headers["Nats-Msg-Id"];
    if (id) {
      const seen = this.ids.get(id);
      if (seen !== undefined) return { seq: seen, duplicate: true };
    }
    const seq = this.messages.length + 1;
    this.messages.push(
      timestampMs === undefined
        ? { seq, subject, data, headers }
        : { seq, subject, data, headers, timestampMs },
    );
    if (id) this.ids.set(id, seq);
    return { seq, duplicate: false };
  }

  addConsumer(
    name: string,
    filterSubject: string,
    startSeq: number,
    maxAckPending: number,
    ackWaitMs: number,
  ): void {
    this.consumers.set(name, {
      filterSubject,
      cursor: Math.max(1, startSeq),
      maxAckPending,
      ackWaitMs,
      pending: new Map(),
      delivered: 0,
    });
  }

  deleteConsumer(name: string): boolean {
    return this.consumers.delete(name);
  }

  consumerNames(): string[] {
    return [...this.consumers.keys()];
  }

  hasConsumer(name: string): boolean {
    return this.consumers.has(name);
  }

  /** Redeliveries first (ack-wait expired), then new messages, within max-ack-pending. */
  pull(name: string, max: number, now: number): Delivery[] {
    const c = this.consumers.get(name);
    if (!c) throw new SluiceError(ErrorCode.Unavailable, `consumer ${name} not found`, { retryable: true });
    const out: StoredMessage[] = [];
    for (const [seq, at] of c.pending) {
      if (out.length >= max) break;
      if (now - at >= c.ackWaitMs) {
        c.pending.set(seq, now);
        out.push(this.messages[seq - 1]!);
      }
    }
    while (out.length < max && c.pending.size < c.maxAckPending && c.cursor <= this.messages.length) {
      const m = this.messages[c.cursor - 1]!;
      c.cursor++;
      if (!subjectMatches(c.filterSubject, m.subject)) continue;
      c.pending.set(m.seq, now);
      out.push(m);
    }
    out.sort((a, b) => a.seq - b.seq);
    return out.map((m) => ({ ...m, deliverySeq: ++c.delivered }));
  }

  /** AckPolicy all: acknowledges every pending sequence <= `seq`. */
  ack(name: string, seq: number): void {
    const c = this.consumers.get(name);
    if (!c) return;
    for (const s of [...c.pending.keys()]) if (s <= seq) c.pending.delete(s);
  }
}

export interface KvEntry {
  /** JSON text; values are copied in and out so no two nodes share an object. */
  value: string | null;
  revision: number;
}

export class MemoryKv {
  private readonly entries = new Map<string, KvEntry>();
  private revision = 0;
  private readonly watchers = new Set<(key: string, e: KvEntry) => void>();
  /** Watchers that also see phantom writes (delivered, then lost by the store). */
  private readonly phantomSeers = new Set<(key: string, e: KvEntry) => void>();
  /**
   * Fault: the next compare-and-set is shown to the phantom-seeing watchers with the revision
   * it would get, then lost: the store keeps the old value and the writer gets an error. Seen on
   * a real cluster when a NATS node died under a write.
   */
  phantomNext = false;

  get(key: string): KvEntry {
    return this.entries.get(key) ?? { value: null, revision: 0 };
  }

  compareAndSet(key: string, value: string, expectedRevision: number): number {
    const cur = this.entries.get(key);
    if ((cur?.revision ?? 0) !== expectedRevision) {
      throw new SluiceError(ErrorCode.Conflict, `${key}: revision ${expectedRevision} is stale`, {
        retryable: true,
      });
    }
    if (this.phantomNext) {
      this.phantomNext = false;
      const ghost = { value, revision: this.revision + 1 };
      for (const w of this.phantomSeers) w(key, ghost);
      throw new SluiceError(ErrorCode.Unavailable, `${key}: write lost`, { retryable: true });
    }
    return this.set(key, value);
  }

  put(key: string, value: string): number {
    return this.set(key, value);
  }

  private set(key: string, value: string): number {
    const e = { value, revision: ++this.revision };
    this.entries.set(key, e);
    for (const w of this.watchers) w(key, e);
    return e.revision;
  }

  /** Current entries in revision order, then every change. */
  watch(onEntry: (key: string, e: KvEntry) => void, seesPhantoms = false): () => void {
    const current = [...this.entries].sort(([, a], [, b]) => a.revision - b.revision);
    for (const [k, e] of current) onEntry(k, e);
    this.watchers.add(onEntry);
    if (seesPhantoms) this.phantomSeers.add(onEntry);
    return () => {
      this.watchers.delete(onEntry);
      this.phantomSeers.delete(onEntry);
    };
  }
}

/** A `JsonStore` straight over a `MemoryKv`, for tests that need no network between them. */
export class MemoryJsonStore<T> implements JsonStore<T> {
  constructor(readonly kv: MemoryKv = new MemoryKv()) {}

  async get(key: string): Promise<Versioned<T>> {
    const e = this.kv.get(key);
    return { value: e.value === null ? null : (JSON.parse(e.value) as T), revision: e.revision };
  }

  async compareAndSet(key: string, value: T, expectedRevision: number): Promise<number> {
    return this.kv.compareAndSet(key, JSON.stringify(value), expectedRevision);
  }

  async put(key: string, value: T): Promise<number> {
    return this.kv.put(key, JSON.stringify(value));
  }

  async watch(onValue: (key: string, v: Versioned<T>) => void): Promise<{ stop(): void }> {
    const stop = this.kv.watch((key, e) =>
      onValue(key, { value: e.value === null ? null : (JSON.parse(e.value) as T), revision: e.revision }),
    );
    return { stop };
  }
}
