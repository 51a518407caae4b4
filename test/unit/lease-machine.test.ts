import { describe, expect, it, vi } from "vitest";
import { createActor, fromPromise, initialTransition, SimulatedClock, transition } from "xstate";
import { fencedError } from "../../shared/contract/errors.js";
import {
  type LeaseInput,
  leaseMachine,
  type RunOutcome,
  type ShardLeaseArgs,
  type VerifyOutcome,
} from "../../shared/core/lease.machine.js";

interface Call<T> {
  input: ShardLeaseArgs;
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
}

const INPUT: LeaseInput = { shard: "demo.1", epoch: 3, worker: "w1", retryBaseMs: 100, retryMaxMs: 1000 };

/** Lets promise settlements propagate through the actor system (no timers involved). */
const flush = async (): Promise<void> => {
  for (let i = 0; i < 3; i++) await new Promise<void>((r) => setImmediate(r));
};

function harness(input: LeaseInput = INPUT) {
  const calls = {
    acquire: [] as Call<{ checkpoint: number }>[],
    run: [] as Call<RunOutcome>[],
    verify: [] as Call<VerifyOutcome>[],
    drain: [] as Call<void>[],
  };
  let abandoned = 0;
  const controlled = <T>(list: Call<T>[]) =>
    fromPromise<T, ShardLeaseArgs>(
      ({ input }) =>
        new Promise<T>((resolve, reject) => {
          list.push({ input, resolve, reject });
        }),
    );
  const machine = leaseMachine.provide({
    actors: {
      acquire: controlled(calls.acquire),
      run: controlled(calls.run),
      verify: controlled(calls.verify),
      drain: controlled(calls.drain),
    },
    actions: {
      abandon: () => {
        abandoned++;
      },
    },
  });
  const clock = new SimulatedClock();
  const actor = createActor(machine, { input, clock });
  const states: string[] = [];
  actor.subscribe((s) => {
    const v = String(s.value);
    if (states.at(-1) !== v) states.push(v);
  });
  actor.start();
  const last = <T>(list: Call<T>[]): Call<T> => {
    const c = list.at(-1);
    expect(c).toBeDefined();
    return c!;
  };
  return {
    actor,
    clock,
    calls,
    states,
    abandoned: () => abandoned,
    value: () => String(actor.getSnapshot().value),
    last,
    /** Resolves the latest acquire and waits until the machine is active. */
    async activate(checkpoint = 0): Promise<void> {
      last(calls.acquire).resolve({ checkpoint });
      await flush();
      expect(String(actor.getSnapshot().value)).toBe("active");
    },
  };
}

describe("leaseMachine: acquiring", () => {
  it("starts in acquiring and invokes acquire with the shard and epoch", () => {
    const h = harness();
    expect(h.value()).toBe("acquiring");
    expect(h.calls.acquire).toHaveLength(1);
    expect(h.calls.acquire[0]!.input).toEqual({ shard: "demo.1", epoch: 3 });
    expect(h.calls.run).toHaveLength(0);
  });

  it("goes active on success, keeps the checkpoint and starts run", async () => {
    const h = harness();
    h.calls.acquire[0]!.resolve({ checkpoint: 41 });
    await flush();
    expect(h.value()).toBe("active");
    expect(h.actor.getSnapshot().context.checkpoint).toBe(41);
    expect(h.actor.getSnapshot().context.attempts).toBe(0);
    expect(h.calls.run).toHaveLength(1);
    expect(h.calls.run[0]!.input).toEqual({ shard: "demo.1", epoch: 3 });
    expect(h.abandoned()).toBe(0);
  });

  it("an acquire error containing FENCED ends fenced and abandons", async () => {
    const h = harness();
    h.calls.acquire[0]!.reject(new Error("FENCED: shard 1 epoch 3 < 4"));
    await flush();
    const snap = h.actor.getSnapshot();
    expect(snap.value).toBe("fenced");
    expect(snap.status).toBe("done");
    expect(snap.output).toEqual({
      result: "fenced",
      reason: "Error: FENCED: shard 1 epoch 3 < 4",
      fencedBy: null,
    });
    expect(h.abandoned()).toBe(1);
    expect(h.calls.run).toHaveLength(0);
    // No retry is ever scheduled.
    h.clock.increment(10_000);
    await flush();
    expect(h.calls.acquire).toHaveLength(1);
  });

  // The sinks reject a zombie's fence with `fencedError(...)`: matched by its code, not its text.
  it("an acquire rejected with the sink's fencedError (code FENCED) ends fenced", async () => {
    const h = harness();
    h.calls.acquire[0]!.reject(fencedError(1, 3, 4));
    await flush();
    expect(h.value()).toBe("fenced");
    expect(h.actor.getSnapshot().output?.result).toBe("fenced");
    expect(h.actor.getSnapshot().output?.fencedBy).toBe(4);
    expect(h.abandoned()).toBe(1);
  });

  it("retries another acquire error only after retryDelay, doubling up to retryMaxMs", async () => {
    const h = harness();
    const expectedDelays = [100, 200, 400, 800, 1000, 1000];
    for (const [i, delay] of expectedDelays.entries()) {
      h.last(h.calls.acquire).reject(new Error(`nats timeout ${i}`));
      await flush();
      expect(h.value()).toBe("backoff");
      expect(h.actor.getSnapshot().context.attempts).toBe(i + 1);
      expect(h.actor.getSnapshot().context.lastError).toBe(`Error: nats timeout ${i}`);
      h.clock.increment(delay - 1);
      await flush();
      expect(h.value()).toBe("backoff");
      expect(h.calls.acquire).toHaveLength(i + 1);
      h.clock.increment(1);
      await flush();
      expect(h.value()).toBe("acquiring");
      expect(h.calls.acquire).toHaveLength(i + 2);
    }
    // Success resets the attempt counter: the next failure waits the base delay again.
    await h.activate(7);
    expect(h.actor.getSnapshot().context.attempts).toBe(0);
    h.last(h.calls.run).resolve({ type: "failed", reason: "pull failed" });
    await flush();
    expect(h.value()).toBe("backoff");
    h.clock.increment(99);
    await flush();
    expect(h.value()).toBe("backoff");
    h.clock.increment(1);
    await flush();
    expect(h.value()).toBe("acquiring");
  });

  it("does not retry at 99ms after the first failure", async () => {
    const h = harness();
    h.calls.acquire[0]!.reject(new Error("boom"));
    await flush();
    h.clock.increment(99);
    await flush();
    expect(h.value()).toBe("backoff");
    expect(h.calls.acquire).toHaveLength(1);
  });

  it("REVOKE while acquiring or in backoff drains without acquiring again", async () => {
    const a = harness();
    a.actor.send({ type: "REVOKE" });
    expect(a.value()).toBe("draining");
    expect(a.calls.drain).toHaveLength(1);

    const b = harness();
    b.calls.acquire[0]!.reject(new Error("boom"));
    await flush();
    b.actor.send({ type: "REVOKE" });
    expect(b.value()).toBe("draining");
    b.clock.increment(10_000);
    await flush();
    expect(b.calls.acquire).toHaveLength(1);
    expect(b.value()).toBe("draining");
  });

  it("a late result of an abandoned acquire is ignored", async () => {
    const h = harness();
    h.actor.send({ type: "REVOKE" });
    h.calls.acquire[0]!.resolve({ checkpoint: 99 });
    await flush();
    expect(h.value()).toBe("draining");
    expect(h.calls.run).toHaveLength(0);
    expect(h.actor.getSnapshot().context.checkpoint).toBe(0);
  });
});

describe("leaseMachine: active, verifying", () => {
  it("run resolving stale -> verifying; verify owner -> active again with a second run", async () => {
    const h = harness();
    await h.activate(5);
    h.calls.run[0]!.resolve({ type: "stale" });
    await flush();
    expect(h.value()).toBe("verifying");
    expect(h.calls.verify).toHaveLength(1);
    expect(h.calls.verify[0]!.input).toEqual({ shard: "demo.1", epoch: 3 });
    h.calls.verify[0]!.resolve("owner");
    await flush();
    expect(h.value()).toBe("active");
    expect(h.calls.run).toHaveLength(2);
    expect(h.calls.acquire).toHaveLength(1); // no re-acquire on a successful re-check
    expect(h.actor.getSnapshot().context.checkpoint).toBe(5);
    expect(h.states).toEqual(["acquiring", "active", "verifying", "active"]);
  });

  it("verify lost -> fenced", async () => {
    const h = harness();
    await h.activate();
    h.calls.run[0]!.resolve({ type: "stale" });
    await flush();
    h.calls.verify[0]!.resolve("lost");
    await flush();
    const snap = h.actor.getSnapshot();
    expect(snap.value).toBe("fenced");
    expect(snap.output).toEqual({ result: "fenced", reason: "lease lost while paused", fencedBy: null });
    expect(h.abandoned()).toBe(1);
  });

  it("a verify error waits retryDelay in verifyBackoff, then verifies again", async () => {
    const h = harness();
    await h.activate();
    h.calls.run[0]!.resolve({ type: "stale" });
    await flush();
    h.calls.verify[0]!.reject(new Error("kv unavailable"));
    await flush();
    expect(h.value()).toBe("verifyBackoff");
    h.clock.increment(99);
    await flush();
    expect(h.calls.verify).toHaveLength(1);
    h.clock.increment(1);
    await flush();
    expect(h.value()).toBe("verifying");
    expect(h.calls.verify).toHaveLength(2);
    h.calls.verify[1]!.resolve("owner");
    await flush();
    expect(h.value()).toBe("active");
  });

  it("run {type:'fenced'} -> fenced with the run's reason", async () => {
    const h = harness();
    await h.activate();
    h.calls.run[0]!.resolve({ type: "fenced", reason: "epoch 3 is fenced by epoch 4", fencedBy: 4 });
    await flush();
    // The sink's epoch travels with the result, so the worker can report it to the coordinator.
    expect(h.actor.getSnapshot().output).toEqual({
      result: "fenced",
      reason: "epoch 3 is fenced by epoch 4",
      fencedBy: 4,
    });
    expect(h.abandoned()).toBe(1);
  });

  it("run {type:'failed'} -> backoff -> acquiring after the base delay", async () => {
    const h = harness();
    await h.activate();
    h.calls.run[0]!.resolve({ type: "failed", reason: "consumer deleted" });
    await flush();
    expect(h.value()).toBe("backoff");
    expect(h.actor.getSnapshot().context.lastError).toBe("consumer deleted");
    expect(h.actor.getSnapshot().context.attempts).toBe(1);
    h.clock.increment(100);
    await flush();
    expect(h.value()).toBe("acquiring");
    expect(h.calls.acquire).toHaveLength(2);
    expect(h.calls.acquire[1]!.input).toEqual({ shard: "demo.1", epoch: 3 });
  });

  it("a rejected run also goes to backoff", async () => {
    const h = harness();
    await h.activate();
    h.calls.run[0]!.reject(new Error("crash"));
    await flush();
    expect(h.value()).toBe("backoff");
    expect(h.actor.getSnapshot().context.lastError).toBe("Error: crash");
  });
});

describe("leaseMachine: release and fencing", () => {
  it("REVOKE while active -> draining -> released", async () => {
    const h = harness();
    await h.activate();
    h.actor.send({ type: "REVOKE" });
    expect(h.value()).toBe("draining");
    expect(h.calls.drain).toHaveLength(1);
    expect(h.calls.drain[0]!.input).toEqual({ shard: "demo.1", epoch: 3 });
    // The stopped run resolving late changes nothing.
    h.calls.run[0]!.resolve({ type: "failed", reason: "stopped" });
    await flush();
    expect(h.value()).toBe("draining");
    h.calls.drain[0]!.resolve();
    await flush();
    const snap = h.actor.getSnapshot();
    expect(snap.value).toBe("released");
    expect(snap.status).toBe("done");
    expect(snap.output).toEqual({ result: "released", reason: null, fencedBy: null });
    expect(h.abandoned()).toBe(0);
  });

  it("a failed drain does not release (it ends fenced, with the error as reason)", async () => {
    const h = harness();
    await h.activate();
    h.actor.send({ type: "REVOKE" });
    h.calls.drain[0]!.reject(new Error("ack failed"));
    await flush();
    // "released" would promise the coordinator that nothing more can land from this owner.
    expect(h.actor.getSnapshot().output).toEqual({
      result: "fenced",
      reason: "Error: ack failed",
      fencedBy: null,
    });
    expect(h.abandoned()).toBe(1);
  });

  /** Brings a fresh machine to the named state. */
  const reach: Record<string, (h: ReturnType<typeof harness>) => Promise<void>> = {
    acquiring: async () => {},
    backoff: async (h) => {
      h.calls.acquire[0]!.reject(new Error("boom"));
      await flush();
    },
    active: async (h) => h.activate(),
    verifying: async (h) => {
      await h.activate();
      h.calls.run[0]!.resolve({ type: "stale" });
      await flush();
    },
    verifyBackoff: async (h) => {
      await h.activate();
      h.calls.run[0]!.resolve({ type: "stale" });
      await flush();
      h.calls.verify[0]!.reject(new Error("x"));
      await flush();
    },
    draining: async (h) => {
      await h.activate();
      h.actor.send({ type: "REVOKE" });
    },
  };

  for (const [state, go] of Object.entries(reach)) {
    it(`FENCE from ${state} -> fenced`, async () => {
      const h = harness();
      await go(h);
      expect(h.value()).toBe(state);
      h.actor.send({ type: "FENCE", reason: "shard now owned by w2 at epoch 4" });
      const snap = h.actor.getSnapshot();
      expect(snap.value).toBe("fenced");
      expect(snap.status).toBe("done");
      expect(snap.output).toEqual({
        result: "fenced",
        reason: "shard now owned by w2 at epoch 4",
        fencedBy: null,
      });
      expect(h.abandoned()).toBe(1);
      // Nothing runs after the fence, whatever settles or fires later.
      const counts = Object.values(h.calls).map((l) => l.length);
      h.clock.increment(60_000);
      for (const l of Object.values(h.calls)) for (const c of l) c.resolve(undefined as never);
      await flush();
      expect(Object.values(h.calls).map((l) => l.length)).toEqual(counts);
      expect(h.actor.getSnapshot().output?.result).toBe("fenced");
    });
  }

  it("events after a final state are ignored", async () => {
    const h = harness();
    await h.activate();
    h.actor.send({ type: "REVOKE" });
    h.calls.drain[0]!.resolve();
    await flush();
    const warn = vi.spyOn(console, "warn").mockImplementation(() => {});
    try {
      h.actor.send({ type: "FENCE", reason: "late" });
    } finally {
      warn.mockRestore();
    }
    expect(h.actor.getSnapshot().output).toEqual({ result: "released", reason: null, fencedBy: null });
    expect(h.abandoned()).toBe(0);
  });
});

describe("leaseMachine as a pure function (initialTransition / transition)", () => {
  it("initialTransition gives acquiring with one invoke of acquire, without running it", () => {
    const [snap, actions] = initialTransition(leaseMachine, INPUT);
    expect(snap.value).toBe("acquiring");
    expect(snap.status).toBe("active");
    expect(snap.context).toEqual({
      ...INPUT,
      attempts: 0,
      checkpoint: 0,
      lastError: null,
      result: null,
      fencedBy: null,
    });
    expect(actions).toHaveLength(1);
    const spawn = actions[0] as unknown as { type: string; params: { src: string; input: unknown } };
    expect(spawn.type).toBe("xstate.spawnChild");
    expect(spawn.params.src).toBe("acquire");
    expect(spawn.params.input).toEqual({ shard: "demo.1", epoch: 3 });
  });

  it("transition is deterministic and does not execute actions", () => {
    let abandoned = 0;
    const machine = leaseMachine.provide({ actions: { abandon: () => void abandoned++ } });
    const [s0] = initialTransition(machine, INPUT);
    const [fenced, actions] = transition(machine, s0, { type: "FENCE", reason: "r" });
    expect(fenced.value).toBe("fenced");
    expect(fenced.status).toBe("done");
    expect(fenced.output).toEqual({ result: "fenced", reason: "r", fencedBy: null });
    expect(actions.map((a) => a.type)).toContain("abandon");
    expect(abandoned).toBe(0);
    // Same input, same output; the source snapshot is untouched.
    const [again] = transition(machine, s0, { type: "FENCE", reason: "r" });
    expect(again.value).toBe(fenced.value);
    expect(again.context).toEqual(fenced.context);
    expect(s0.value).toBe("acquiring");
    expect(s0.context.result).toBeNull();

    const [draining, dActions] = transition(machine, s0, { type: "REVOKE" });
    expect(draining.value).toBe("draining");
    expect(dActions.map((a) => a.type)).toEqual(["xstate.stopChild", "xstate.spawnChild"]);
  });

  it("the acquire done event moves to active with the checkpoint", () => {
    const [s0, actions] = initialTransition(leaseMachine, INPUT);
    const id = (actions[0] as unknown as { params: { id: string } }).params.id;
    const done = { type: `xstate.done.actor.${id}`, output: { checkpoint: 12 } };
    const [s1] = transition(leaseMachine, s0, done as never);
    expect(s1.value).toBe("active");
    expect(s1.context.checkpoint).toBe(12);
    const failed = { type: `xstate.error.actor.${id}`, error: new Error("FENCED by epoch 9") };
    const [s2] = transition(leaseMachine, s0, failed as never);
    expect(s2.value).toBe("fenced");
    const transient = { type: `xstate.error.actor.${id}`, error: new Error("timeout") };
    const [s3] = transition(leaseMachine, s0, transient as never);
    expect(s3.value).toBe("backoff");
    expect(s3.context.attempts).toBe(1);
  });
});
