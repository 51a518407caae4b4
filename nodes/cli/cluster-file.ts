/**
 * The record of a local cluster: `<dir>/cluster.json` lists every process it started (NATS
 * nodes, the sink, coordinators, workers) with its PID, and where its config and sink are.
 *
 * Layout of `<dir>`: config.json (the cluster config), cluster.json (processes), sink.db
 * (SQLite sink), postgres/ (a private PostgreSQL server's data), nats/nN/ (server config and
 * store), logs/ (one log per process).
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { NatsConnection } from "@nats-io/transport-node";
import { loadConfigFile } from "../../shared/adapters/config-file.js";
import {
  type ConnectOptions,
  connectForPublishing,
  connectNats,
} from "../../shared/adapters/nats/connection.js";
import { openInspector } from "../../shared/adapters/sink/open-sinks.js";
import { SqliteSinkInspector } from "../../shared/adapters/sink/sqlite-inspector.js";
import type { SluiceConfig } from "../../shared/contract/config.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import type { Role } from "../../shared/contract/permissions.js";
import type { SinkInspector } from "../../shared/contract/ports.js";
import type { PipelineStreams } from "../../shared/contract/wire.js";
import { credentialsFrom } from "../node-options.js";
import { type ClusterSecurity, clientTls, readCredentials } from "./cluster-secrets.js";

export interface ProcessRecord {
  /** The port a server listens on, when the record is one (the private PostgreSQL server). */
  port?: number;
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

/**
 * Where the cluster's pipelines commit by default, as `cluster.json` names it: the SQLite file
 * the sink process owns, a PostgreSQL database (`url`, never with a password in it when the
 * cluster made the server), or an output stream per pipeline.
 */
export type ClusterSink =
  | { type: "sqlite"; path: string }
  | { type: "postgres"; url: string }
  | { type: "jetstream" };

export interface ClusterFile {
  dir: string;
  nats: NatsRecord[];
  /** The process that owns the SQLite sink file (when a pipeline commits to SQLite). */
  sinks: ProcessRecord[];
  /** The private PostgreSQL server the cluster started (`sluice up --sink postgres` without a URL). */
  postgres?: ProcessRecord[];
  coordinators: ProcessRecord[];
  workers: ProcessRecord[];
  sink: ClusterSink;
  /** The SQLite sink file, `<dir>/sink.db` (used only by pipelines that commit to SQLite). */
  sqlite: string;
  config: string;
  /** First port of the nodes' HTTP endpoints; each node keeps its port across restarts. */
  httpPortBase?: number;
  /**
   * Where the credentials and the CA are when the cluster is secured (TLS, one user per role,
   * encrypted store); absent on a cluster started with `--insecure`.
   */
  security?: ClusterSecurity;
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

/**
 * The read side of the cluster's sinks (close it when done): the SQLite file itself, PostgreSQL
 * over a small pool, output streams over `nc` (needed when a pipeline commits to one).
 */
export function openSinkInspector(c: ClusterFile, nc?: NatsConnection): SinkInspector {
  return openInspector(readClusterConfig(c), {
    sqlite: () => new SqliteSinkInspector(c.sqlite),
    ...(nc ? { nc } : {}),
  });
}

/** How `role` connects to the cluster: its servers and, when secured, its credentials and the CA. */
export function clusterConnectOptions(c: ClusterFile, role: Role, name: string): ConnectOptions {
  const servers = c.nats.map((n) => n.url);
  return c.security
    ? { servers, name, auth: readCredentials(c.security, role), tls: clientTls(c.security) }
    : { servers, name };
}

/** A connection to the cluster as `role` (see `clusterConnectOptions`). */
export function connectCluster(c: ClusterFile, role: Role, name: string): Promise<NatsConnection> {
  return connectNats(clusterConnectOptions(c, role, name));
}

/**
 * A connection to publish `pipeline`'s records as the producer. On an open cluster it goes to
 * the server that leads the pipeline's stream (`connectForPublishing`); the producer's user may
 * only publish records, so on a secured cluster it cannot ask which server that is.
 */
export function connectProducer(
  c: ClusterFile,
  pipeline: PipelineStreams,
  name: string,
): Promise<NatsConnection> {
  const opts = clusterConnectOptions(c, "producer", name);
  return c.security ? connectNats(opts) : connectForPublishing({ ...opts, pipeline });
}

/**
 * A connection for a CLI command that names its cluster by `--dir D` (the local cluster's
 * servers, and when secured `role`'s credentials and the CA) or by `--servers` (any cluster:
 * credentials from `SLUICE_CREDENTIALS`, or `SLUICE_USER` with `SLUICE_PASSWORD[_FILE]`, and the
 * CA from `SLUICE_TLS_CA`, as the nodes take them). `servers` counts the cluster's nodes.
 */
export async function connectTarget(
  o: { dir: string; servers?: string | undefined },
  role: Role,
  name: string,
): Promise<{ nc: NatsConnection; servers: string[] }> {
  if (!o.servers) {
    const c = readClusterFile(o.dir);
    return { nc: await connectCluster(c, role, name), servers: c.nats.map((n) => n.url) };
  }
  const servers = o.servers.split(",").filter(Boolean);
  const env = process.env;
  const auth = credentialsFrom(role, {
    ...(env.SLUICE_CREDENTIALS ? { credentials: env.SLUICE_CREDENTIALS } : {}),
    ...(env.SLUICE_USER ? { user: env.SLUICE_USER } : {}),
    ...(env.SLUICE_PASSWORD_FILE ? { passwordFile: env.SLUICE_PASSWORD_FILE } : {}),
    ...(env.SLUICE_PASSWORD ? { password: env.SLUICE_PASSWORD } : {}),
    ...(env.SLUICE_INBOX_PREFIX ? { inboxPrefix: env.SLUICE_INBOX_PREFIX } : {}),
  });
  const tls = env.SLUICE_TLS_CA ? { caFile: env.SLUICE_TLS_CA } : undefined;
  return { nc: await connectNats({ servers, name, auth, tls }), servers };
}

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
  return loadConfigFile(c.config);
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
    if (cmd.length > 0) return cmd.includes(marker);
    // An empty command line is a zombie, or a process inside execve (setpriv becoming
    // nats-server): the new image's arguments are not mapped yet. Only the zombie is gone.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return true;
  }
}
