/**
 * The simulator's faults: a seed-drawn schedule of crashes, pauses (also one that strikes as a
 * worker sends a commit), partitions, joins, leaves, a slow sink, a lossy network and phantom
 * assignment writes, each healed after its length, and everything healed at `healAt`. Every
 * draw comes from the world's one `Rng`, in schedule order, so a seed replays exactly.
 */

import type { CoordinatorRuntime } from "../../runtime/coordinator-runtime.js";
import type { WorkerRuntime } from "../../runtime/worker-runtime.js";
import type { MemoryKv } from "../memory-broker.js";
import type { Checker } from "./checker.js";
import type { Rng } from "./rng.js";
import type { SimLoop, SimNode } from "./sim-loop.js";
import { BROKER, SINK, type SimNet } from "./sim-net.js";
import type { SimOptions } from "./sim-options.js";

export interface WorkerProc {
  node: SimNode;
  runtime: WorkerRuntime;
  leaving: boolean;
  gone: boolean;
}

export interface CoordinatorProc {
  node: SimNode;
  runtime: CoordinatorRuntime;
}

/** What the faults reach in the world they strike. */
export interface FaultTarget {
  readonly loop: SimLoop;
  readonly rng: Rng;
  readonly net: SimNet;
  readonly o: SimOptions;
  readonly checker: Checker;
  readonly kvAssign: MemoryKv;
  readonly workers: Map<string, WorkerProc>;
  readonly coordinators: Map<string, CoordinatorProc>;
  /** Each injected fault, as `<ms>ms <what>`. */
  readonly faults: string[];
  log(line: string): void;
  liveWorkers(): WorkerProc[];
  startWorker(id?: string, node?: SimNode): string;
  startCoordinator(id: string, node?: SimNode): void;
}

export class SimFaults {
  private readonly pausedSince = new Map<SimNode, number>();
  /** node -> pause length armed to strike at the node's next commit. */
  private readonly armed = new Map<SimNode, number>();

  constructor(private readonly w: FaultTarget) {}

  schedule(): void {
    const n = this.w.rng.int(1, this.w.o.maxFaults);
    for (let i = 0; i < n; i++) {
      const at = this.w.rng.int(500, this.w.o.healAt - 500);
      const len = this.w.rng.int(300, 3_500);
      const kind = this.w.rng.pick([
        "crash-worker",
        "pause-worker",
        "pause-worker-mid-commit",
        "partition-worker-broker",
        "partition-worker-sink",
        "partition-worker-coordinators",
        "crash-leader",
        "pause-leader",
        "partition-leader-broker",
        "join-worker",
        "leave-worker",
        "slow-sink",
        "lossy-network",
        "phantom-write",
      ] as const);
      this.w.loop.at(at, () => this.inject(kind, Math.min(len, this.w.o.healAt - at)));
    }
    this.w.loop.at(this.w.o.healAt, () => this.healAll());
  }

  freezeOnCommit(node: SimNode): boolean {
    const len = this.armed.get(node);
    if (len === undefined || node.paused) return false;
    this.armed.delete(node);
    const from = this.w.loop.now;
    this.note(`pause ${node.id} for ${len} ms as it sends a commit`);
    this.pausedSince.set(node, from);
    node.pause();
    this.w.loop.at(Math.min(from + len, Math.max(from, this.w.o.healAt)), () => this.resume(node, from));
    return true;
  }

  private pickWorker(): WorkerProc | undefined {
    const ws = this.w.liveWorkers().filter((w) => w.node.up && !w.node.paused);
    return ws.length > 0 ? this.w.rng.pick(ws) : undefined;
  }

  private leader(): CoordinatorProc | undefined {
    return [...this.w.coordinators.values()].find((c) => c.node.up && c.runtime.isLeader);
  }

  private note(what: string): void {
    this.w.faults.push(`${this.w.loop.now}ms ${what}`);
    this.w.log(`FAULT ${what}`);
  }

  private inject(kind: string, len: number): void {
    const until = this.w.loop.now + len;
    switch (kind) {
      case "crash-worker": {
        const w = this.pickWorker();
        if (!w) return;
        this.note(`crash ${w.node.id} for ${len} ms`);
        w.node.crash();
        this.w.checker.onCrash(w.node.id);
        this.w.loop.at(until, () => this.restartWorker(w));
        return;
      }
      case "pause-worker-mid-commit": {
        const w = this.pickWorker();
        if (w) this.armed.set(w.node, len);
        return;
      }
      case "pause-worker": {
        const w = this.pickWorker();
        if (!w) return;
        const from = this.w.loop.now;
        this.note(`pause ${w.node.id} for ${len} ms`);
        this.pausedSince.set(w.node, from);
        w.node.pause();
        this.w.loop.at(until, () => this.resume(w.node, from));
        return;
      }
      case "partition-worker-broker":
      case "partition-worker-sink":
      case "partition-worker-coordinators": {
        const w = this.pickWorker();
        if (!w) return;
        const others =
          kind === "partition-worker-broker"
            ? [BROKER]
            : kind === "partition-worker-sink"
              ? [SINK]
              : [...this.w.coordinators.keys()];
        this.note(`cut ${w.node.id} from ${others.join(",")} for ${len} ms`);
        for (const o of others) this.w.net.cut(w.node.id, o);
        this.w.loop.at(until, () => {
          for (const o of others) this.w.net.heal(w.node.id, o);
        });
        return;
      }
      case "crash-leader": {
        const c = this.leader();
        if (!c) return;
        this.note(`crash leader ${c.node.id} for ${len} ms`);
        c.node.crash();
        this.w.loop.at(until, () => this.restartCoordinator(c));
        return;
      }
      case "partition-leader-broker": {
        const c = this.leader();
        if (!c) return;
        this.note(`cut leader ${c.node.id} from broker for ${len} ms`);
        this.w.net.cut(c.node.id, BROKER);
        this.w.loop.at(until, () => this.w.net.heal(c.node.id, BROKER));
        return;
      }
      case "pause-leader": {
        const c = this.leader();
        if (!c) return;
        const from = this.w.loop.now;
        this.note(`pause leader ${c.node.id} for ${len} ms`);
        this.pausedSince.set(c.node, from);
        c.node.pause();
        this.w.loop.at(until, () => this.resume(c.node, from));
        return;
      }
      case "join-worker": {
        const id = this.w.startWorker();
        this.note(`join ${id}`);
        return;
      }
      case "leave-worker": {
        if (this.w.liveWorkers().length < 2) return;
        const w = this.pickWorker();
        if (!w) return;
        this.note(`${w.node.id} leaves`);
        w.leaving = true;
        void w.runtime.drain(10_000).then(() => {
          w.gone = true;
          w.node.crash();
          this.w.checker.onCrash(w.node.id);
          this.w.log(`${w.node.id}: left`);
        });
        return;
      }
      case "phantom-write": {
        this.note("the next assignment write reaches the workers' watches, then is lost");
        this.w.kvAssign.phantomNext = true;
        return;
      }
      case "slow-sink": {
        const ms = this.w.rng.int(100, 900);
        this.note(`sink ${ms} ms slower for ${len} ms`);
        this.w.net.conditions.sinkDelayMs = ms;
        this.w.loop.at(until, () => {
          this.w.net.conditions.sinkDelayMs = 0;
        });
        return;
      }
      case "lossy-network": {
        const c = {
          dropP: this.w.rng.int(2, 20) / 100,
          dupP: this.w.rng.int(0, 10) / 100,
          extra: this.w.rng.int(0, 150),
        };
        this.note(
          `network drops ${c.dropP}, duplicates ${c.dupP}, +${c.extra} ms, reordering, for ${len} ms`,
        );
        this.w.net.conditions = {
          ...this.w.net.conditions,
          dropP: c.dropP,
          dupP: c.dupP,
          extraDelayMs: c.extra,
          reorder: true,
        };
        this.w.loop.at(until, () => {
          this.w.net.conditions = {
            ...this.w.net.conditions,
            dropP: 0,
            dupP: 0,
            extraDelayMs: 0,
            reorder: false,
          };
        });
        return;
      }
    }
  }

  private resume(node: SimNode, from: number): void {
    if (!node.paused) return;
    this.pausedSince.delete(node);
    const list = this.w.checker.pauses.get(node.id) ?? [];
    list.push([from, this.w.loop.now]);
    this.w.checker.pauses.set(node.id, list);
    this.w.log(`${node.id}: resumed after ${this.w.loop.now - from} ms`);
    node.resume();
  }

  private restartWorker(w: WorkerProc): void {
    if (w.node.up || w.gone) return;
    w.node.restart();
    this.w.log(`${w.node.id}: restarted`);
    this.w.startWorker(w.node.id, w.node);
  }

  private restartCoordinator(c: CoordinatorProc): void {
    if (c.node.up) return;
    c.node.restart();
    this.w.log(`${c.node.id}: restarted`);
    this.w.startCoordinator(c.node.id, c.node);
  }

  healAll(): void {
    this.w.log("HEAL everything");
    this.w.net.healAll();
    for (const w of this.w.workers.values()) {
      if (w.gone) continue;
      if (w.node.paused) this.resume(w.node, this.pausedSince.get(w.node) ?? this.w.loop.now);
      if (!w.node.up) this.restartWorker(w);
    }
    for (const c of this.w.coordinators.values()) {
      if (c.node.paused) this.resume(c.node, this.pausedSince.get(c.node) ?? this.w.loop.now);
      if (!c.node.up) this.restartCoordinator(c);
    }
  }
}
