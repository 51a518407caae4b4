import type { AssignmentEntry } from "../../contract/ownership.js";
import type { JsonStore, Versioned } from "../../contract/ports.js";

/** Replaces every graceful revoke by an immediate move to the next owner (a test-only unsafe mode). */
export class ImmediateHandoffStore implements JsonStore<AssignmentEntry> {
  constructor(private readonly inner: JsonStore<AssignmentEntry>) {}
  get(key: string): Promise<Versioned<AssignmentEntry>> {
    return this.inner.get(key);
  }
  watch(onValue: (key: string, v: Versioned<AssignmentEntry>) => void) {
    return this.inner.watch(onValue);
  }
  compareAndSet(key: string, e: AssignmentEntry, expectedRevision: number): Promise<number> {
    if (e.phase === "revoking" && e.next) {
      return this.inner.compareAndSet(
        key,
        { owner: e.next, epoch: e.epoch + 1, phase: "active", at: e.at },
        expectedRevision,
      );
    }
    return this.inner.compareAndSet(key, e, expectedRevision);
  }
  put(key: string, e: AssignmentEntry): Promise<number> {
    return this.inner.put(key, e);
  }
}
