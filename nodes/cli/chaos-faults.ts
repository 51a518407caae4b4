/**
 * The faults `sluice chaos` injects: each is a script in chaos/ (the scripts people run by
 * hand are the ones tested), a seeded plan of which to inject in what order, and the target
 * each one hits.
 */
import { spawn } from "node:child_process";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Rng } from "../../shared/testkit/sim/rng.js";
import { type ClusterFile, isOurProcess } from "./cluster-file.js";

export const FAULTS = [
  "worker-kill",
  "worker-pause",
  "leader-kill",
  "nats-kill",
  "nats-pause",
  "nats-partition",
  "cpu-starve",
  "clock-skew",
  "rolling-restart",
  "scale",
  "postgres-restart",
  "postgres-kill-connections",
] as const;

/** Faults of the sink's own database: part of `mixed` only when the cluster runs one. */
const DATABASE_FAULTS: readonly Fault[] = ["postgres-restart", "postgres-kill-connections"];

/** The faults that apply to cluster `c` (a database fault needs its private PostgreSQL server). */
export function applicableFaults(c: ClusterFile): Fault[] {
  return FAULTS.filter((f) => !DATABASE_FAULTS.includes(f) || (c.postgres ?? []).length > 0);
}
export type Fault = (typeof FAULTS)[number];

export interface FaultRecord {
  type: Fault;
  target: string;
  injected_at: number;
  healed_at: number | null;
  /** Shards whose commits the fault could interrupt. */
  shards: string[];
  /** s from injection until every affected shard committed again (null: not observed). */
  recovery_s: number | null;
  /** s from the heal until the whole cluster was settled again (every shard owned and active). */
  settled_after_heal_s: number | null;
  script_exit: number;
}

const chaosDir = resolve(
  fileURLToPath(new URL(".", import.meta.url)),
  /[\\/]dist[\\/]/.test(import.meta.url) ? "../../.." : "../..",
  "chaos",
);

/** Runs one chaos script to completion; returns its events and exit code. */
export function runScript(
  fault: Fault,
  dir: string,
  durationS: number,
  target: string | undefined,
  /** Aborted: the script is sent SIGINT, and its trap heals the fault at once. */
  signal?: AbortSignal,
): Promise<{ events: Array<{ event: string; target: string; at: number }>; code: number; stderr: string }> {
  return new Promise((resolvePromise) => {
    const args = [join(chaosDir, `${fault}.sh`), "--dir", dir, "--duration", String(durationS)];
    if (target) args.push("--target", target);
    const child = spawn("bash", args, { stdio: ["ignore", "pipe", "pipe"] });
    const interrupt = (): void => {
      child.kill("SIGINT");
    };
    if (signal?.aborted) interrupt();
    signal?.addEventListener("abort", interrupt, { once: true });
    let out = "";
    let err = "";
    child.stdout.on("data", (d) => {
      out += d;
    });
    child.stderr.on("data", (d) => {
      err += d;
    });
    child.on("close", (code) => {
      signal?.removeEventListener("abort", interrupt);
      const events = out
        .split("\n")
        .filter((l) => l.startsWith("{"))
        .map((l) => JSON.parse(l) as { event: string; target: string; at: number });
      resolvePromise({ events, code: code ?? 1, stderr: err.trim() });
    });
  });
}

/** Checks a scenario name: `mixed`, a fault, or a comma-separated list of faults. */
export function parseScenario(s: string): Fault[] | "mixed" {
  if (s === "mixed") return "mixed";
  const list = s.split(",").map((x) => x.trim());
  for (const f of list) {
    if (!(FAULTS as readonly string[]).includes(f))
      throw new Error(`unknown fault '${f}': ${FAULTS.join(", ")} or mixed`);
  }
  return list as Fault[];
}

/** The faults to inject, in order: a scenario's list cycled, or every type once then seeded draws. */
export function plan(scenario: string, rng: Rng, available: readonly Fault[] = FAULTS): Fault[] {
  const sc = parseScenario(scenario);
  if (sc !== "mixed") return Array.from({ length: 1000 }, (_, i) => sc[i % sc.length]!);
  const all = [...available];
  for (let i = all.length - 1; i > 0; i--) {
    const j = rng.int(0, i);
    [all[i], all[j]] = [all[j]!, all[i]!];
  }
  return [...all, ...Array.from({ length: 1000 }, () => rng.pick(available))];
}

/** Whom a fault hits: a live worker, a NATS node, or nobody in particular. */
export function targetFor(fault: Fault, c: ClusterFile, rng: Rng): string | undefined {
  const workers = c.workers.filter((w) => isOurProcess(w.pid, c.dir)).map((w) => w.id);
  switch (fault) {
    case "worker-kill":
    case "worker-pause":
    case "clock-skew":
      return workers.length > 0 ? rng.pick(workers) : undefined;
    case "nats-kill":
    case "nats-pause":
    case "nats-partition":
      return rng.pick(c.nats.map((n) => n.id));
    default:
      return undefined;
  }
}
