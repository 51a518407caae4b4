/**
 * A local cluster on 127.0.0.1: a 3-node NATS JetStream cluster, the sink, coordinators and
 * workers, each a separate OS process, all recorded in `<dir>/cluster.json` (see
 * `cluster-file.ts`). `up` starts one, `down` stops it; workers are added, removed and any
 * process restarted while it runs.
 */
import { chmodSync, chownSync, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import pRetry from "p-retry";
import { loadConfigFile } from "../../shared/adapters/config-file.js";
import { provision } from "../../shared/adapters/nats/provision.js";
import { usesSqlite } from "../../shared/adapters/sink/open-sinks.js";
import { parseConfig, redactUrl, type SluiceConfig } from "../../shared/contract/config.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import {
  type ClusterFile,
  clusterFilePath,
  connectCluster,
  isOurProcess,
  type NatsRecord,
  type NatsRuntime,
  type ProcessRecord,
  readClusterFile,
  writeClusterFile,
} from "./cluster-file.js";
import { checkCheckpointsAgainstStreams, checkSecurityMode } from "./cluster-guards.js";
import { type ClusterSecurity, caFile, ensureClusterSecrets } from "./cluster-secrets.js";
import { containerPid, ensureNatsImage, removeContainer, restartContainer } from "./nats-containers.js";
import { natsConfig, natsUid, startNats, startNatsNode, waitMetaLeader } from "./nats-nodes.js";
import { type StartEnv, startNodeProcess, stopProcess, waitExit, waitHttpOk } from "./node-processes.js";
import { startPostgres, stopPostgres } from "./postgres-server.js";

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
  /**
   * Where pipelines without a sink of their own commit (replacing the config's `sink`): SQLite
   * (the sink process), PostgreSQL (`postgresUrl`, or a private server the cluster starts) or an
   * output stream per pipeline.
   */
  sink?: "sqlite" | "postgres" | "jetstream";
  /** An existing PostgreSQL database for `sink: postgres`; password from the config's options. */
  postgresUrl?: string;
  /**
   * Plain NATS: no TLS, no users, no encryption at rest. Off by default: the cluster serves TLS,
   * each role connects with its own credentials, and the store is encrypted (README "Security").
   */
  insecure?: boolean;
}

/** The private PostgreSQL server's port: client port base + 7000 (see `UpOptions.portBase`). */
export const postgresPort = (portBase: number): number => portBase + 7000;

/**
 * Writes a NATS node's config, readable by that node only: when secured it holds every role's
 * password and the store's key. The node's own key goes to its user too (see `natsUid`).
 * Returns the TLS files the config names, which a container mounts.
 */
function writeNatsConfig(conf: string, text: string, id: string, security?: ClusterSecurity): string[] {
  writeFileSync(conf, text, { mode: 0o600 });
  chmodSync(conf, 0o600);
  if (!security) return [];
  const key = join(security.tlsDir, `${id}-key.pem`);
  const uid = natsUid(id);
  if (uid !== null) for (const f of [conf, key]) chownSync(f, uid, uid);
  return [caFile(security), join(security.tlsDir, `${id}.pem`), key];
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
  checkSecurityMode(dir, !o.insecure, o.dir);
  const n = o.natsNodes ?? 3;
  for (const sub of ["logs", "nats"]) mkdirSync(join(dir, sub), { recursive: true });
  let cfg = o.config ?? loadConfigFile(o.configFile);
  const c: ClusterFile = {
    dir,
    nats: [],
    sinks: [],
    postgres: [],
    coordinators: [],
    workers: [],
    sink: { type: "sqlite", path: join(dir, "sink.db") },
    sqlite: join(dir, "sink.db"),
    config: join(dir, "config.json"),
    httpPortBase: o.portBase + 6000,
  };
  if (o.sink === "postgres") {
    let url = o.postgresUrl;
    if (!url) {
      const pg = await startPostgres({
        dataDir: join(dir, "postgres"),
        port: postgresPort(o.portBase),
        log: join(dir, "logs", "pg.log"),
      });
      c.postgres!.push({ id: "pg", pid: pg.pid, port: pg.port });
      url = pg.url;
    }
    const prev = cfg.sink.type === "postgres" ? cfg.sink : undefined;
    cfg = parseConfig({ ...cfg, sink: { ...prev, type: "postgres", url } });
  } else if (o.sink) {
    cfg = parseConfig({ ...cfg, sink: { type: o.sink } });
  }
  c.sink =
    cfg.sink.type === "postgres"
      ? { type: "postgres", url: redactUrl(cfg.sink.url) }
      : cfg.sink.type === "jetstream"
        ? { type: "jetstream" }
        : { type: "sqlite", path: c.sqlite };
  // Owner-only: a PostgreSQL URL in it may carry a password.
  writeFileSync(c.config, `${JSON.stringify(cfg, null, 2)}\n`, { mode: 0o600 });
  chmodSync(c.config, 0o600);
  const ids = Array.from({ length: n }, (_, i) => `n${i + 1}`);
  if (!o.insecure) c.security = ensureClusterSecrets(dir, ids);
  if (o.natsRuntime === "container") await ensureNatsImage();
  const started = await Promise.all(
    ids.map(async (id, i) => {
      const conf = join(dir, "nats", `${id}.conf`);
      const files = writeNatsConfig(conf, natsConfig(dir, i, n, o.portBase, cfg, c.security), id, c.security);
      const node = await startNatsNode(dir, conf, id, o.natsRuntime ?? "process", files);
      return {
        id,
        ...node,
        url: `${c.security ? "tls" : "nats"}://127.0.0.1:${o.portBase + i}`,
        monitor: `http://127.0.0.1:${o.portBase + 4000 + i}`,
      } satisfies NatsRecord;
    }),
  );
  c.nats.push(...started);
  writeClusterFile(c);
  await Promise.all(
    c.nats.map((s) =>
      waitHttpOk(`${s.monitor}/healthz?js-enabled-only=true`, 20_000, {
        id: `NATS node ${s.id}`,
        pid: s.pid,
        log: join(dir, "logs", `${s.id}.log`),
        marker: s.container ? "" : dir,
      }),
    ),
  );
  // Health comes before the JetStream meta leader; an API call before it waits out its timeout.
  await waitMetaLeader(c.nats[0]!.monitor, 20_000);
  const nc = await connectCluster(c, "admin", "sluice-up");
  try {
    // The JetStream meta leader is elected a moment after the servers answer health checks.
    await pRetry(() => provision(nc, cfg, Math.min(3, n)), {
      retries: 60,
      minTimeout: 250,
      maxTimeout: 1000,
      factor: 1.2,
    });
    try {
      await checkCheckpointsAgainstStreams(nc, cfg, c.sqlite);
    } catch (err) {
      // Nothing of this cluster may run on: its workers would take the shards at those checkpoints.
      await nc.close();
      await down(dir);
      throw err;
    }
  } finally {
    if (!nc.isClosed()) await nc.close();
  }
  // The sink process owns the SQLite file: started only when a pipeline commits there.
  if (usesSqlite(cfg)) c.sinks.push(startNodeProcess(c, "sink", "s1"));
  for (let i = 1; i <= o.coordinators; i++) c.coordinators.push(startNodeProcess(c, "coordinator", `c${i}`));
  for (let i = 1; i <= o.workers; i++) c.workers.push(startNodeProcess(c, "worker", `w${i}`));
  writeClusterFile(c);
  // Every node up and answering, or the reason one is not, from its log.
  await Promise.all([...c.sinks, ...c.coordinators, ...c.workers].map((p) => waitNodeStarted(c, p)));
  return c;
}

/** Waits for a node's `/healthz` (it answers once the node has started); fails with its log's tail. */
export function waitNodeStarted(c: ClusterFile, p: ProcessRecord, deadlineMs = 60_000): Promise<void> {
  if (!p.http) return Promise.resolve();
  return waitHttpOk(`${p.http}/healthz`, deadlineMs, {
    id: p.id,
    pid: p.pid,
    log: join(c.dir, "logs", `${p.id}.log`),
    marker: c.dir,
  });
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
  await Promise.all((c.postgres ?? []).map((p) => stopPostgres(p.pid)));
  await Promise.all(
    c.nats.filter((p) => p.container).map((p) => removeContainer(p.container!).catch(() => undefined)),
  );
  writeClusterFile({ ...c, nats: [], sinks: [], postgres: [], coordinators: [], workers: [] });
}

type Role = "nats" | "sink" | "coordinator" | "worker" | "postgres";

function findProcess(c: ClusterFile, id: string): { role: Role; rec: ProcessRecord } | undefined {
  const lists: Array<[Role, ProcessRecord[]]> = [
    ["nats", c.nats],
    ["sink", c.sinks ?? []],
    ["postgres", c.postgres ?? []],
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
  if (found.role === "postgres") {
    // Fast shutdown (open transactions roll back), or a kill; then the same data directory again.
    if (opts.kill) process.kill(found.rec.pid, "SIGKILL");
    await stopPostgres(found.rec.pid);
  } else if (isOurProcess(found.rec.pid, c.dir)) {
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
  } else if (found.role === "postgres") {
    const port = found.rec.port ?? 0;
    pid = (
      await startPostgres({ dataDir: join(c.dir, "postgres"), port, log: join(c.dir, "logs", "pg.log") })
    ).pid;
  } else {
    pid = startNodeProcess(c, found.role, id, 1, opts).pid;
  }
  if (pid === undefined) throw new SluiceError(ErrorCode.ClusterFailure, `could not restart ${id}`);
  const now = readClusterFile(dir);
  now.postgres ??= [];
  const list =
    found.role === "nats"
      ? now.nats
      : found.role === "sink"
        ? now.sinks
        : found.role === "postgres"
          ? now.postgres
          : found.role === "coordinator"
            ? now.coordinators
            : now.workers;
  const rec = list.find((p) => p.id === id);
  if (rec) rec.pid = pid;
  else list.push({ id, pid } as NatsRecord);
  writeClusterFile(now);
  return { id, pid };
}
