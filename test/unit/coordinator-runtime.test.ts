import { afterEach, describe, expect, it } from "vitest";
import { waitUntil } from "../../nodes/cli/wait.js";
import { parseConfig } from "../../shared/contract/config.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import { silentLogger } from "../../shared/contract/logger.js";
import type { AssignmentEntry, Heartbeat } from "../../shared/contract/ownership.js";
import { type JsonStore, systemScheduler, type Versioned } from "../../shared/contract/ports.js";
import {
  type CoordinatorRecord,
  CoordinatorRuntime,
  LEADER_KEY,
} from "../../shared/runtime/coordinator-runtime.js";

/** A compare-and-set register per key, like a KV bucket; `watch` shows what the test says. */
class Register<T> implements JsonStore<T> {
  readonly values = new Map<string, Versioned<T>>();
  private revision = 0;
  onValue: ((key: string, v: Versioned<T>) => void) | undefined;
  async get(key: string): Promise<Versioned<T>> {
    return this.values.get(key) ?? { value: null, revision: 0 };
  }
  async watch(onValue: (key: string, v: Versioned<T>) => void) {
    this.onValue = onValue;
    for (const [k, v] of this.values) onValue(k, v);
    return { stop: () => (this.onValue = undefined) };
  }
  async compareAndSet(key: string, value: T, expectedRevision: number): Promise<number> {
    if ((this.values.get(key)?.revision ?? 0) !== expectedRevision)
      throw new SluiceError(ErrorCode.Conflict, `${key} is not at revision ${expectedRevision}`);
    return this.put(key, value);
  }
  async put(key: string, value: T): Promise<number> {
    const v = { value, revision: ++this.revision };
    this.values.set(key, v);
    this.onValue?.(key, v);
    return v.revision;
  }
}

describe("CoordinatorRuntime leadership", () => {
  let runtime: CoordinatorRuntime | undefined;
  afterEach(async () => {
    await runtime?.stop();
    runtime = undefined;
  });

  it("takes over even when its watch showed a leader record the KV does not hold", async () => {
    const cfg = parseConfig({ timing: { leaderTtlMs: 300 } });
    const control = new Register<CoordinatorRecord>();
    // The KV holds a dead coordinator's record at revision 1 ...
    await control.put(LEADER_KEY, { holder: "c9", term: 4 });
    runtime = new CoordinatorRuntime({
      id: "c1",
      shards: [],
      assignments: new Register<AssignmentEntry>(),
      control,
      bus: { onHeartbeat: () => {}, onReleased: () => {}, close: async () => {} },
      scheduler: systemScheduler,
      timing: cfg.timing,
      log: silentLogger,
      tickMs: 10,
    });
    await runtime.start();
    // ... but the watch then shows a write at revision 7 that the KV lost (a phantom, as after
    // a NATS node failure): every takeover against revision 7 fails.
    control.onValue?.(LEADER_KEY, { value: { holder: "c9", term: 5 }, revision: 7 });
    await waitUntil("c1 to lead", 5_000, () => runtime!.isLeader || undefined, 5);
    expect((await control.get(LEADER_KEY)).value).toMatchObject({ holder: "c1" });
  });
});

/** Blocks this thread's event loop for `ms`, without spinning a core. */
function stallLoop(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

describe("CoordinatorRuntime failure detection", () => {
  let runtime: CoordinatorRuntime | undefined;
  afterEach(async () => {
    await runtime?.stop();
    runtime = undefined;
  });

  it("does not count its own paused event loop as a member's silence, and still loses a silent member", async () => {
    const cfg = parseConfig({ timing: { heartbeatMs: 100, failureTimeoutMs: 500, leaderTtlMs: 3_000 } });
    let deliver: ((hb: Heartbeat) => void) | undefined;
    const lost: number[] = [];
    runtime = new CoordinatorRuntime({
      id: "c1",
      shards: ["demo.0"],
      assignments: new Register<AssignmentEntry>(),
      control: new Register<CoordinatorRecord>(),
      bus: {
        onHeartbeat: (h) => {
          deliver = (hb) => h(hb, () => {});
        },
        onReleased: () => {},
        close: async () => {},
      },
      scheduler: systemScheduler,
      timing: cfg.timing,
      log: silentLogger,
      tickMs: 10,
      onCommand: (c) => {
        if (c.type === "member-lost") lost.push(Date.now());
      },
    });
    await runtime.start();
    await waitUntil("c1 to lead", 5_000, () => runtime!.isLeader || undefined, 5);
    const beat = (): void =>
      deliver!({ worker: "w1", capacity: 1, held: {}, leaving: false, sentAt: Date.now() });
    beat();
    // The loop stalls for almost twice the failure timeout. The heartbeat w1 sent meanwhile is
    // read after the stall, behind the coordinator's overdue tick (timers run in expiry order).
    stallLoop(900);
    setTimeout(beat, 0);
    const resumed = Date.now();
    // w1 then falls silent for good: it is lost a failure timeout after its last heartbeat.
    await waitUntil("w1 lost", 5_000, () => (lost.length > 0 ? true : undefined), 5);
    expect(lost).toHaveLength(1);
    expect(lost[0]! - resumed).toBeGreaterThanOrEqual(cfg.timing.failureTimeoutMs);
  });
});
