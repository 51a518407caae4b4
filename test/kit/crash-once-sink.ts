/** A sink for tests of what a crash between a batch's dead letters and its commit leaves behind. */
import type { MemorySink } from "../../shared/adapters/sink/memory-sink.js";
import type { ShardRef } from "../../shared/contract/ownership.js";
import type { Sink } from "../../shared/contract/ports.js";

/** Wraps a memory sink; with `crash` set, its next commit with rows fails once, as a crash would. */
export class CrashOnce implements Sink {
  crash = false;
  constructor(private readonly inner: MemorySink) {}
  fence = (ref: ShardRef, epoch: number) => this.inner.fence(ref, epoch);
  checkpoint = (ref: ShardRef) => this.inner.checkpoint(ref);
  recordIds = (ref: ShardRef, from: number) => this.inner.recordIds(ref, from);
  close = () => this.inner.close();
  commit: Sink["commit"] = (ref, epoch, worker, rows, lastSeq, opts) => {
    if (this.crash && rows.length > 0) {
      this.crash = false;
      return Promise.reject(new Error("worker crashed"));
    }
    return this.inner.commit(ref, epoch, worker, rows, lastSeq, opts);
  };
}
