/**
 * CPU time of a local cluster's processes, by role, over a stretch of a benchmark. On a machine
 * whose cores the servers, the workers, the sink and the producer all share, an end-to-end rate
 * is what the cores give once every process has taken its share per record, so where those
 * microseconds go says what limits the rate (see docs/performance.md).
 */
import { readdirSync, readFileSync } from "node:fs";
import type { ClusterFile } from "../cli/cluster-file.js";

/** The roles whose CPU is counted; `producer` is this process (the benchmark publishes itself). */
export const CPU_ROLES = ["nats", "workers", "sink", "coordinators", "producer"] as const;
export type CpuRole = (typeof CPU_ROLES)[number];
export type RoleCpu = Record<CpuRole, number>;
/** CPU per record by role and in all, µs. */
export type RoleCpuPerRecord = RoleCpu & { total: number };

/** Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`, 100 on Linux everywhere). */
const TICKS_PER_S = 100;

interface ProcStat {
  ppid: number;
  /** CPU seconds of the process itself (user + system). */
  own: number;
  /** CPU seconds of its children that exited and were waited for (PostgreSQL's ended backends). */
  reaped: number;
}

function readStat(pid: number): ProcStat | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
    const n = (i: number) => Number(f[i - 3]);
    return { ppid: n(4), own: (n(14) + n(15)) / TICKS_PER_S, reaped: (n(16) + n(17)) / TICKS_PER_S };
  } catch {
    return null;
  }
}

/** Every process on the machine with its parent, read once. */
function processTable(): Map<number, ProcStat> {
  const t = new Map<number, ProcStat>();
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    const st = readStat(Number(e));
    if (st) t.set(Number(e), st);
  }
  return t;
}

/** CPU seconds of `pid` and every process under it, including descendants already reaped. */
function treeCpu(table: Map<number, ProcStat>, children: Map<number, number[]>, pid: number): number {
  const st = table.get(pid);
  if (!st) return 0;
  let s = st.own + st.reaped;
  for (const c of children.get(pid) ?? []) s += treeCpu(table, children, c);
  return s;
}

/**
 * CPU seconds used so far by the cluster's processes per role (each process with what runs
 * under it: a wrapper's server, PostgreSQL's backends) and by this process as `producer`;
 * `asWorkers` adds processes standing in for workers (the ack-only readers) to `workers`.
 */
export function clusterCpu(c: ClusterFile, asWorkers: readonly { pid: number }[] = []): RoleCpu {
  const table = processTable();
  const children = new Map<number, number[]>();
  for (const [pid, st] of table) {
    const list = children.get(st.ppid);
    if (list) list.push(pid);
    else children.set(st.ppid, [pid]);
  }
  const sum = (pids: readonly { pid: number }[] | undefined): number =>
    (pids ?? []).reduce((a, p) => a + treeCpu(table, children, p.pid), 0);
  const own = process.cpuUsage();
  return {
    nats: sum(c.nats),
    workers: sum(c.workers) + sum(asWorkers),
    sink: sum(c.sinks) + sum(c.postgres),
    coordinators: sum(c.coordinators),
    producer: (own.user + own.system) / 1e6,
  };
}

/** Microseconds of CPU per record and role between two readings, and their total. */
export function cpuPerRecord(before: RoleCpu, after: RoleCpu, records: number): RoleCpuPerRecord {
  const out = { total: 0 } as RoleCpuPerRecord;
  for (const r of CPU_ROLES) {
    out[r] = Math.round((1e6 * Math.max(0, after[r] - before[r])) / records);
    out.total += out[r];
  }
  return out;
}

/** `servers 62, workers 56, sink 28, coordinators 5, producer 9`: CPU per record by role, µs. */
export const roleText = (x: RoleCpu): string =>
  `servers ${x.nats}, workers ${x.workers}, sink ${x.sink}, coordinators ${x.coordinators}, producer ${x.producer}`;

/** `servers 62, …, producer 9 (total 160) µs per record`. */
export const cpuText = (x: RoleCpuPerRecord): string => `${roleText(x)} (total ${x.total}) µs per record`;
