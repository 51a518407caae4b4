/**
 * A local cluster on 127.0.0.1: a 3-node NATS JetStream cluster, coordinators and workers,
 * each a separate OS process, all recorded in `<dir>/cluster.json`.
 *
 * Layout of `<dir>`: config.json (the cluster config), cluster.json (processes), sink.db
 * (SQLite sink), nats/nN/ (server config and store), logs/ (one log per process).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  writeFileSync,
} from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import pRetry from "p-retry";
import { connectNats } from "../../shared/adapters/nats/connection.js";
import { provision } from "../../shared/adapters/nats/provision.js";
import { loadConfig, type SluiceConfig } from "../../shared/contract/config.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import { partitionMapping } from "../../shared/contract/wire.js";
import {
  containerPid,
  ensureNatsImage,
  removeContainer,
  restartContainer,
  startNatsContainer,
} from "./nats-containers.js";

export interface ProcessRecord {
  id: string;
  pid: number;
  /** The node's HTTP endpoint (`/metrics`; the dashboard on coordinators). */
  http?: string;
}

export interface NatsRecord extends ProcessRecord {
  url: string;
  monitor: string;
  /** Docker container id when the node runs in a container; `pid` is then its host PID. */
  container?: string;
}

/** How NATS nodes run: plain processes, or Docker containers on the host network. */
export type NatsRuntime = "process" | "container";

export interface ClusterFile {
  dir: string;
  nats: NatsRecord[];
  /** The process that owns the SQLite sink file. */
  sinks: ProcessRecord[];
  coordinators: ProcessRecord[];
  workers: ProcessRecord[];
  sink: string;
  config: string;
  /** First port of the nodes' HTTP endpoints; each node keeps its port across restarts. */
  httpPortBase?: number;
}

export interface UpOptions {
  dir: string;
  workers: number;
  coordinators: number;
  /** First client port; cluster ports are +2000, monitor ports +4000, node HTTP ports +6000. */
  portBase: number;
  /** Optional config file; copied to `<dir>/config.json`. */
  configFile?: string;
  /** Overrides applied on top of the config (tests shorten timings). */
  config?: SluiceConfig;
  natsNodes?: number;
  natsRuntime?: NatsRuntime;
}

// Node processes always run the compiled code, also when this module is loaded from source (tests).
const here = fileURLToPath(new URL(".", import.meta.url));
const root = /[\\/]dist[\\/]nodes[\\/]cli[\\/]?$/.test(here)
  ? resolve(here, "../../..")
  : resolve(here, "../..");
export const workerScript = join(root, "dist", "nodes", "worker", "main.js");
export const coordinatorScript = join(root, "dist", "nodes", "coordinator", "main.js");
export const sinkScript = join(root, "dist", "nodes", "sink", "main.js");
export const cliScript = join(root, "dist", "nodes", "cli", "main.js");

export const clusterFilePath = (dir: string): string => join(resolve(dir), "cluster.json");

export function readClusterFile(dir: string): ClusterFile {
  const p = clusterFilePath(dir);
  if (!existsSync(p)) {
    throw new SluiceError(
      ErrorCode.ClusterFailure,
      `no cluster at ${resolve(dir)} (missing cluster.json); run 'sluice up' first`,
    );
  }
  return JSON.parse(readFileSync(p, "utf8")) as ClusterFile;
}

export function writeClusterFile(c: ClusterFile): void {
  const p = clusterFilePath(c.dir);
  writeFileSync(`${p}.tmp`, `${JSON.stringify(c, null, 2)}\n`);
  renameSync(`${p}.tmp`, p);
}

export function readClusterConfig(c: ClusterFile): SluiceConfig {
  return loadConfig(c.config);
}

/** True if `pid` is alive and its command line mentions `marker` (guards against PID reuse). */
export function isOurProcess(pid: number, marker: string): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    return cmd.includes(marker);
  } catch {
    return true;
  }
}

function natsConfig(dir: string, i: number, n: number, base: number, cfg: SluiceConfig): string {
  const routes = Array.from({ length: n }, (_, k) => `"nats-route://127.0.0.1:${base + 2000 + k}"`).join(
    ", ",
  );
  const mappings = cfg.pipelines
    .map((p) => partitionMapping(p.name, p.shards))
    .map(([from, to]) => `  "${from}": "${to}"`)
    .join("\n");
  return `server_name: n${i + 1}
listen: 127.0.0.1:${base + i}
http: 127.0.0.1:${base + 4000 + i}
max_payload: 1MB
jetstream {
  store_dir: "${join(dir, "nats", `n${i + 1}`)}"
  max_memory_store: 268435456
  max_file_store: 8589934592
}
cluster {
  name: sluice
  listen: 127.0.0.1:${base + 2000 + i}
  routes: [${routes}]
}
mappings = {
${mappings}
}
`;
}

/** Extra environment of a started process; `faketime` runs it with a skewed wall clock. */
export interface StartEnv {
  /** A libfaketime offset such as "+30s" or "-2m" (monotonic clocks stay real). */
  faketime?: string;
}

const LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

function spawnLogged(cmd: string, args: string[], logFile: string, extra: StartEnv = {}): ChildProcess {
  const fd = openSync(logFile, "a");
  const env: NodeJS.ProcessEnv = { ...process.env, SLUICE_LOG_JSON: "1" };
  if (extra.faketime) {
    if (!existsSync(LIBFAKETIME)) {
      throw new SluiceError(
        ErrorCode.ClusterFailure,
        "libfaketime is not installed (apt-get install faketime)",
      );
    }
    Object.assign(env, {
      LD_PRELOAD: LIBFAKETIME,
      FAKETIME: extra.faketime,
      FAKETIME_DONT_FAKE_MONOTONIC: "1",
    });
  }
  const child = spawn(cmd, args, { detached: true, stdio: ["ignore", fd, fd], env });
  child.unref();
  return child;
}

async function waitMetaLeader(monitor: string, deadlineMs: number): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (Date.now() < end) {
    try {
      const jsz = (await (await fetch(`${monitor}/jsz`)).json()) as { meta_cluster?: { leader?: string } };
      if (jsz.meta_cluster?.leader) return;
    } catch {
      // not answering yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function waitHttpOk(url: string, deadlineMs: number): Promise<void> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > end) throw new SluiceError(ErrorCode.ClusterFailure, `${url} did not become healthy`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export function startNodeProcess(
  c: ClusterFile,
  role: "worker" | "coordinator" | "sink",
  id: string,
  capacity = 1,
  extra: StartEnv = {},
): ProcessRecord {
  const script = role === "worker" ? workerScript : role === "sink" ? sinkScript : coordinatorScript;
  const http = httpEndpointFor(c, id);
  const args = [
    script,
    "--id",
    id,
    "--servers",
    c.nats.map((n) => n.url).join(","),
    "--config",
    c.config,
    "--sink",
    c.sink,
    "--capacity",
    String(capacity),
    ...(http ? ["--http-port", new URL(http).port] : []),
  ];
  // SLUICE_PROFILE_DIR: every node writes a V8 CPU profile there when it exits.
  const profile = process.env.SLUICE_PROFILE_DIR
    ? [
        "--cpu-prof",
        `--cpu-prof-dir=${resolve(process.env.SLUICE_PROFILE_DIR)}`,
        `--cpu-prof-name=${id}.cpuprofile`,
      ]
    : [];
  // Workers and the sink allocate a short-lived object or two per record: a larger young
  // generation cuts their garbage-collection time by about two thirds (measured by `npm run bench`).
  const heap = role === "coordinator" ? [] : ["--max-semi-space-size=32"];
  const child = spawnLogged(
    process.execPath,
    [...heap, ...profile, ...args],
    join(c.dir, "logs", `${id}.log`),
    extra,
  );
  if (child.pid === undefined)
    throw new SluiceError(ErrorCode.ClusterFailure, `could not start ${role} ${id}`);
  return http ? { id, pid: child.pid, http } : { id, pid: child.pid };
}

/** The node's HTTP endpoint: the one it had before (restarts keep it), else the next free port. */
function httpEndpointFor(c: ClusterFile, id: string): string | undefined {
  if (c.httpPortBase === undefined) return undefined;
  const nodes = [...c.sinks, ...c.coordinators, ...c.workers];
  const known = nodes.find((p) => p.id === id)?.http;
  if (known) return known;
  const used = nodes.map((p) => (p.http ? Number(new URL(p.http).port) : 0));
  return `http://127.0.0.1:${Math.max(c.httpPortBase - 1, ...used) + 1}`;
}

export async function up(o: UpOptions): Promise<ClusterFile> {
  const dir = resolve(o.dir);
  if (existsSync(clusterFilePath(dir))) {
    const old = readClusterFile(dir);
    const alive = [...old.nats, ...(old.sinks ?? []), ...old.coordinators, ...old.workers].filter((p) =>
      isOurProcess(p.pid, dir),
    );
    if (alive.length > 0) {
      throw new SluiceError(
        ErrorCode.ClusterFailure,
        `a cluster is already running in ${dir}; run 'sluice down --dir ${o.dir}'`,
      );
    }
  }
  const n = o.natsNodes ?? 3;
  for (const sub of ["logs", "nats"]) mkdirSync(join(dir, sub), { recursive: true });
  // NATS nodes may run under their own uid: they must be able to reach their config and store.
  for (const d of [dir, join(dir, "nats")]) chmodSync(d, 0o755);
  const cfg = o.config ?? loadConfig(o.configFile);
  const configPath = join(dir, "config.json");
  writeFileSync(configPath, `${JSON.stringify(cfg, null, 2)}\n`);
  const c: ClusterFile = {
    dir,
    nats: [],
    sinks: [],
    coordinators: [],
    workers: [],
    sink: join(dir, "sink.db"),
    config: configPath,
    httpPortBase: o.portBase + 6000,
  };
  if (o.natsRuntime === "container") await ensureNatsImage();
  const started = await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const id = `n${i + 1}`;
      const conf = join(dir, "nats", `${id}.conf`);
      writeFileSync(conf, natsConfig(dir, i, n, o.portBase, cfg));
      const node = await startNatsNode(dir, conf, id, o.natsRuntime ?? "process");
      return {
        id,
        ...node,
        url: `nats://127.0.0.1:${o.portBase + i}`,
        monitor: `http://127.0.0.1:${o.portBase + 4000 + i}`,
      } satisfies NatsRecord;
    }),
  );
  c.nats.push(...started);
  writeClusterFile(c);
  await Promise.all(c.nats.map((s) => waitHttpOk(`${s.monitor}/healthz?js-enabled-only=true`, 20_000)));
  // Health comes before the JetStream meta leader; an API call before it waits out its timeout.
  await waitMetaLeader(c.nats[0]!.monitor, 20_000);
  const nc = await connectNats({ servers: c.nats.map((s) => s.url), name: "sluice-up" });
  try {
    // The JetStream meta leader is elected a moment after the servers answer health checks.
    await pRetry(() => provision(nc, cfg, Math.min(3, n)), {
      retries: 60,
      minTimeout: 250,
      maxTimeout: 1000,
      factor: 1.2,
    });
  } finally {
    await nc.close();
  }
  c.sinks.push(startNodeProcess(c, "sink", "s1"));
  for (let i = 1; i <= o.coordinators; i++) c.coordinators.push(startNodeProcess(c, "coordinator", `c${i}`));
  for (let i = 1; i <= o.workers; i++) c.workers.push(startNodeProcess(c, "worker", `w${i}`));
  writeClusterFile(c);
  return c;
}

export function nextWorkerId(c: ClusterFile): string {
  let max = 0;
  for (const w of c.workers) {
    const m = /^w(\d+)$/.exec(w.id);
    if (m) max = Math.max(max, Number(m[1]));
  }
  return `w${max + 1}`;
}

export function addWorker(dir: string, id?: string, capacity = 1): ProcessRecord {
  const c = readClusterFile(dir);
  const wid = id ?? nextWorkerId(c);
  if (c.workers.some((w) => w.id === wid && isOurProcess(w.pid, c.dir))) {
    throw new SluiceError(ErrorCode.ClusterFailure, `worker ${wid} is already running`);
  }
  const rec = startNodeProcess(c, "worker", wid, capacity);
  c.workers = [...c.workers.filter((w) => w.id !== wid), rec];
  writeClusterFile(c);
  return rec;
}

async function waitExit(pid: number, marker: string, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (!isOurProcess(pid, marker)) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return !isOurProcess(pid, marker);
}

/** SIGTERM (graceful drain), then SIGKILL after `graceMs`. */
export async function stopProcess(p: ProcessRecord, marker: string, graceMs: number): Promise<void> {
  if (!isOurProcess(p.pid, marker)) return;
  try {
    process.kill(p.pid, "SIGTERM");
  } catch {
    return;
  }
  if (await waitExit(p.pid, marker, graceMs)) return;
  try {
    process.kill(p.pid, "SIGKILL");
  } catch {
    // already gone
  }
  await waitExit(p.pid, marker, 5_000);
}

export async function removeWorker(dir: string, id: string, graceMs = 30_000): Promise<void> {
  const c = readClusterFile(dir);
  const w = c.workers.find((x) => x.id === id);
  if (!w) throw new SluiceError(ErrorCode.ClusterFailure, `no worker ${id} in ${c.dir}`);
  await stopProcess(w, c.dir, graceMs);
  const now = readClusterFile(dir);
  now.workers = now.workers.filter((x) => x.id !== id);
  writeClusterFile(now);
}

/** Stops everything the cluster file lists: workers (draining), coordinators, then NATS. */
export async function down(dir: string): Promise<void> {
  const c = readClusterFile(dir);
  await Promise.all(c.workers.map((w) => stopProcess(w, c.dir, 15_000)));
  await Promise.all(c.coordinators.map((p) => stopProcess(p, c.dir, 5_000)));
  await Promise.all((c.sinks ?? []).map((p) => stopProcess(p, c.dir, 10_000)));
  await Promise.all(c.nats.map((p) => stopProcess(p, c.dir, 10_000)));
  await Promise.all(
    c.nats.filter((p) => p.container).map((p) => removeContainer(p.container!).catch(() => undefined)),
  );
  writeClusterFile({ ...c, nats: [], sinks: [], coordinators: [], workers: [] });
}

/**
 * When run as root, NATS node `nN` runs as uid/gid `61000 + N` (through setpriv), so a chaos
 * script can cut exactly one node's cluster traffic with iptables' owner match.
 */
export const natsUid = (id: string): number | null => {
  const n = Number(id.replace(/^n/, ""));
  return process.getuid?.() === 0 && existsSync("/usr/bin/setpriv") && Number.isInteger(n)
    ? 61_000 + n
    : null;
};

async function startNatsNode(
  dir: string,
  conf: string,
  id: string,
  runtime: NatsRuntime,
): Promise<{ pid: number; container?: string }> {
  const log = join(dir, "logs", `${id}.log`);
  if (runtime === "container") {
    const uid = natsUid(id);
    const store = join(dir, "nats", id);
    mkdirSync(store, { recursive: true });
    if (uid !== null) chownTree(store, uid);
    const { containerId } = await startNatsContainer({
      name: `sluice-${createHash("sha1").update(dir).digest("hex").slice(0, 8)}-${id}`,
      configFile: conf,
      storeDir: store,
      logFile: log,
      ...(uid === null ? {} : { user: `${uid}:${uid}` }),
    });
    return { pid: await containerPid(containerId), container: containerId };
  }
  const child = startNats(conf, log, id);
  if (child.pid === undefined) {
    throw new SluiceError(
      ErrorCode.ClusterFailure,
      "could not start nats-server: is it installed? (apt-get install nats-server)",
    );
  }
  return { pid: child.pid };
}

function startNats(conf: string, log: string, id: string): ChildProcess {
  const uid = natsUid(id);
  if (uid === null) return spawnLogged("nats-server", ["-c", conf], log);
  const store = join(dirname(conf), id);
  mkdirSync(store, { recursive: true });
  chownTree(store, uid);
  return spawnLogged(
    "setpriv",
    [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "nats-server", "-c", conf],
    log,
  );
}

function chownTree(path: string, uid: number): void {
  chownSync(path, uid, uid);
  for (const e of readdirSync(path, { withFileTypes: true })) {
    const p = join(path, e.name);
    if (e.isDirectory()) chownTree(p, uid);
    else chownSync(p, uid, uid);
  }
}

type Role = "nats" | "sink" | "coordinator" | "worker";

function findProcess(c: ClusterFile, id: string): { role: Role; rec: ProcessRecord } | undefined {
  const lists: Array<[Role, ProcessRecord[]]> = [
    ["nats", c.nats],
    ["sink", c.sinks ?? []],
    ["coordinator", c.coordinators],
    ["worker", c.workers],
  ];
  for (const [role, list] of lists) {
    const rec = list.find((p) => p.id === id);
    if (rec) return { role, rec };
  }
  return undefined;
}

/**
 * Starts a listed process again with its original arguments: stopped first if it still runs
 * (SIGTERM, or SIGKILL with `kill`). The cluster file records the new PID.
 */
export async function restartProcess(
  dir: string,
  id: string,
  opts: { kill?: boolean } & StartEnv = {},
): Promise<ProcessRecord> {
  const c = readClusterFile(dir);
  const found = findProcess(c, id);
  if (!found) throw new SluiceError(ErrorCode.ClusterFailure, `no process ${id} in ${c.dir}`);
  if (isOurProcess(found.rec.pid, c.dir)) {
    if (opts.kill) {
      process.kill(found.rec.pid, "SIGKILL");
      await waitExit(found.rec.pid, c.dir, 5_000);
    } else {
      await stopProcess(found.rec, c.dir, 30_000);
    }
  }
  let pid: number | undefined;
  const natsRec = c.nats.find((x) => x.id === id);
  if (natsRec?.container) {
    await restartContainer(natsRec.container);
    pid = await containerPid(natsRec.container);
  } else if (found.role === "nats") {
    pid = startNats(join(c.dir, "nats", `${id}.conf`), join(c.dir, "logs", `${id}.log`), id).pid;
  } else {
    pid = startNodeProcess(c, found.role, id, 1, opts).pid;
  }
  if (pid === undefined) throw new SluiceError(ErrorCode.ClusterFailure, `could not restart ${id}`);
  const now = readClusterFile(dir);
  const list =
    found.role === "nats"
      ? now.nats
      : found.role === "sink"
        ? now.sinks
        : found.role === "coordinator"
          ? now.coordinators
          : now.workers;
  const rec = list.find((p) => p.id === id);
  if (rec) rec.pid = pid;
  else list.push({ id, pid } as NatsRecord);
  writeClusterFile(now);
  return { id, pid };
}
