/**
 * A `JsonStore` on a replicated JetStream KV bucket. Every conditional write is a
 * compare-and-set on the key's revision, so two coordinators can never both move a shard to
 * a new epoch, nor both take the leader lease.
 */
import type { KV, Kvm } from "@nats-io/kv";
import pRetry from "p-retry";
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import type { JsonStore, Versioned } from "../../contract/ports.js";

const enc = new TextEncoder();
const dec = new TextDecoder();

function decodeJson<T>(bytes: Uint8Array): T | null {
  if (bytes.length === 0) return null;
  try {
    return JSON.parse(dec.decode(bytes)) as T;
  } catch {
    return null;
  }
}

/**
 * Opens a KV bucket, retrying with backoff for up to `deadlineMs`: a node starting while the
 * cluster still elects the bucket's stream leader sees its info request time out.
 */
export function openBucket(kvm: Kvm, name: string, deadlineMs = 30_000): Promise<KV> {
  return pRetry(() => kvm.open(name), {
    retries: Number.POSITIVE_INFINITY,
    minTimeout: 100,
    maxTimeout: 1_000,
    maxRetryTime: deadlineMs,
  });
}

export class JetStreamJsonStore<T> implements JsonStore<T> {
  constructor(
    private readonly kv: KV,
    /** Only keys matching this filter are watched (`>` for all). */
    private readonly watchKey = ">",
  ) {}

  async get(key: string): Promise<Versioned<T>> {
    const e = await this.kv.get(key);
    if (e?.operation !== "PUT") return { value: null, revision: e?.revision ?? 0 };
    return { value: decodeJson<T>(e.value), revision: e.revision };
  }

  /**
   * Watches every key. Opening the watcher is retried with backoff (a server still electing
   * the bucket's leader times the request out), for up to `openDeadlineMs` the first time and
   * for as long as the watch runs afterwards: if the watcher ends (a cluster fault can end it),
   * a new one is opened; it replays current values, and consumers ignore revisions they have
   * already seen, so nothing is missed.
   */
  async watch(
    onValue: (key: string, v: Versioned<T>) => void,
    openDeadlineMs = 30_000,
  ): Promise<{ stop(): void }> {
    let stopped = false;
    let current: { stop(): void } | null = null;
    const open = async (): Promise<void> => {
      const it = await this.kv.watch({ key: this.watchKey });
      current = it;
      if (stopped) it.stop();
      void (async () => {
        try {
          for await (const e of it) {
            onValue(e.key, {
              value: e.operation === "PUT" ? decodeJson<T>(e.value) : null,
              revision: e.revision,
            });
          }
        } catch {
          // ended by a fault: reopened below
        }
        if (stopped) return;
        await pRetry(open, {
          retries: Number.POSITIVE_INFINITY,
          minTimeout: 250,
          maxTimeout: 2_000,
          shouldRetry: () => !stopped,
        }).catch(() => undefined);
      })();
    };
    await pRetry(open, {
      retries: Number.POSITIVE_INFINITY,
      minTimeout: 100,
      maxTimeout: 1_000,
      maxRetryTime: openDeadlineMs,
    });
    return {
      stop: () => {
        stopped = true;
        current?.stop();
      },
    };
  }

  async compareAndSet(key: string, value: T, expectedRevision: number): Promise<number> {
    const data = enc.encode(JSON.stringify(value));
    try {
      return expectedRevision === 0
        ? await this.kv.create(key, data)
        : await this.kv.update(key, data, expectedRevision);
    } catch (err) {
      const msg = String((err as Error).message ?? err);
      if (msg.includes("wrong last sequence") || msg.includes("key exists")) {
        throw new SluiceError(ErrorCode.Conflict, `${key}: revision ${expectedRevision} is stale`, {
          retryable: true,
          cause: err,
        });
      }
      throw new SluiceError(ErrorCode.Unavailable, `${key}: KV write failed: ${msg}`, {
        retryable: true,
        cause: err,
      });
    }
  }

  async put(key: string, value: T): Promise<number> {
    return this.kv.put(key, enc.encode(JSON.stringify(value)));
  }
}
