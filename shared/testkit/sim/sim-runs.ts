/**
 * The simulator's runs: `runSeed` plays one seed of faults and checks every invariant;
 * `runScale` converges a large fault-free cluster and counts the shards a join moves.
 */
import type { AssignmentEntry } from "../../contract/ownership.js";
import { defaultSimOptions, type SeedResult, type SimOptions } from "./sim-options.js";
import { SimWorld } from "./sim-world.js";

export async function runSeed(seed: number, opts: Partial<SimOptions> = {}): Promise<SeedResult> {
  const o = { ...defaultSimOptions, ...opts };
  const w = new SimWorld(seed, o);
  for (let i = 1; i <= o.coordinators; i++) w.startCoordinator(`c${i}`);
  for (let i = 0; i < o.workers; i++) w.startWorker();
  w.scheduleSchemas();
  w.scheduleLoad();
  w.scheduleFaults();
  const stopAt = o.healAt + o.livenessMs;
  let settledAt: number | null = null;
  // Run in slices; stop early on a violation or once settled after healing.
  for (let t = 500; t <= stopAt; t += 500) {
    await w.loop.runUntil(t);
    if (!w.checker.ok) break;
    if (t >= Math.max(o.healAt, o.loadMs) && w.settled() === null) {
      settledAt = t;
      break;
    }
  }
  if (w.checker.ok && settledAt === null) {
    w.checker.violations.push({
      at: w.loop.now,
      invariant: "liveness",
      detail: `not settled ${o.livenessMs} ms after healing: ${w.settled()}`,
    });
  }
  if (w.checker.ok) w.checker.finalCheck();
  let merge: SeedResult["merge"];
  if (w.checker.ok && w.merge) {
    const m = w.merge;
    w.checker.checkMerge(m, await w.sink.mergeRows(m.name), false);
    const branches = [...m.priorities].map(([pipeline, priority]) => ({ pipeline, priority }));
    const first = await w.sink.reconcileLate({ merge: m.name, policy: m.policy, branches });
    merge = { policy: m.policy, rows: (await w.sink.mergeRows(m.name)).length, reconciled: first.reconciled };
    w.checker.checkMerge(m, await w.sink.mergeRows(m.name), true);
    // A second reconciliation finds nothing pending and changes nothing.
    const again = await w.sink.reconcileLate({ merge: m.name, policy: m.policy, branches });
    if (again.reconciled !== 0)
      w.checker.violations.push({
        at: w.loop.now,
        invariant: "merge",
        detail: `a second reconciliation applied ${again.reconciled} late record(s)`,
      });
    w.checker.checkMerge(m, await w.sink.mergeRows(m.name), true);
  }
  return {
    seed,
    ok: w.checker.ok,
    violations: w.checker.violations,
    faults: w.faults,
    records: w.checker.published.size,
    committed: w.committedCount(),
    fencedRejects: w.checker.fencedRejects,
    sharedCommits: w.sharedCommits,
    steps: w.loop.steps,
    virtualMs: w.loop.now,
    trace: w.trace,
    ...(merge ? { merge } : {}),
  };
}

export interface ScaleResult {
  shards: number;
  workers: number;
  /** Virtual ms until every shard was owned, fenced and the counts balanced. */
  convergedMs: number;
  counts: number[];
  /** Shards that changed owner when one more worker joined. */
  movedOnJoin: number;
  /** ceil(shards / workers) + 1 */
  moveBound: number;
}

/** A large, fault-free cluster: converge, then add one worker and count the shards that move. */
export async function runScale(shards: number, workers: number, seed = 1): Promise<ScaleResult> {
  const o: SimOptions = {
    ...defaultSimOptions,
    shards,
    workers,
    coordinators: 1,
    records: 0,
    maxFaults: 0,
    worker: { ...defaultSimOptions.worker, pullWaitMs: 2_000, ackWaitMs: 30_000 },
  };
  const w = new SimWorld(seed, o);
  w.startCoordinator("c1");
  for (let i = 0; i < workers; i++) w.startWorker();
  const settle = async (limitMs: number): Promise<number> => {
    const start = w.loop.now;
    for (let t = start + 250; t <= start + limitMs; t += 250) {
      await w.loop.runUntil(t);
      if (w.settled() === null) return t - start;
    }
    throw new Error(`not converged after ${limitMs} ms: ${w.settled()}`);
  };
  const convergedMs = await settle(60_000);
  const owners = (): Map<string, string> =>
    new Map(
      w.shards.map((s) => [s, (JSON.parse(w.kvAssign.get(s).value ?? "{}") as AssignmentEntry).owner ?? ""]),
    );
  const before = owners();
  const counts = [...before.values()].reduce(
    (m, o) => m.set(o, (m.get(o) ?? 0) + 1),
    new Map<string, number>(),
  );
  w.startWorker();
  await settle(60_000);
  const after = owners();
  const movedOnJoin = w.shards.filter((s) => before.get(s) !== after.get(s)).length;
  return {
    shards,
    workers,
    convergedMs,
    counts: [...counts.values()],
    movedOnJoin,
    moveBound: Math.ceil(shards / workers) + 1,
  };
}
