/** Node processes of a local cluster (sink, coordinators, workers): started detached, logged, stopped. */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, openSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import {
  type ClusterFile,
  coordinatorScript,
  isOurProcess,
  type ProcessRecord,
  sinkScript,
  workerScript,
} from "./cluster-file.js";
import { caFile, credentialsFile } from "./cluster-secrets.js";

/** Extra environment of a started process; `faketime` runs it with a skewed wall clock. */
export interface StartEnv {
  /** A libfaketime offset such as "+30s" or "-2m" (monotonic clocks stay real). */
  faketime?: string;
}

const LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

export function spawnLogged(
  cmd: string,
  args: string[],
  logFile: string,
  extra: StartEnv = {},
): ChildProcess {
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

/** The last `lines` lines of a log file, or a note that it cannot be read. */
export function logTail(file: string, lines = 12): string {
  try {
    const all = readFileSync(file, "utf8").trimEnd().split("\n");
    return all.slice(-lines).join("\n");
  } catch (err) {
    return `(log unreadable: ${(err as Error).message})`;
  }
}

/**
 * Waits until `url` answers 2xx. A process that exits first, or a deadline that passes, fails
 * with the cause as its log tells it: the last lines of `log`, and where the log is.
 */
export async function waitHttpOk(
  url: string,
  deadlineMs: number,
  node?: { id: string; pid: number; log: string; marker: string },
): Promise<void> {
  const end = Date.now() + deadlineMs;
  const failed = (why: string): SluiceError =>
    new SluiceError(
      ErrorCode.ClusterFailure,
      node
        ? `${node.id} ${why}; the last lines of its log (${node.log}):\n${logTail(node.log)}`
        : `${url} ${why}`,
    );
  for (;;) {
    try {
      const r = await fetch(url);
      if (r.ok) return;
    } catch {
      // not listening yet
    }
    if (node && !isOurProcess(node.pid, node.marker)) throw failed("exited while starting");
    if (Date.now() > end)
      throw failed(`did not become healthy within ${Math.round(deadlineMs / 1000)} s (${url})`);
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
    c.sqlite,
    "--capacity",
    String(capacity),
    ...(http ? ["--http-port", new URL(http).port] : []),
    ...(c.security
      ? ["--credentials", credentialsFile(c.security, role), "--tls-ca", caFile(c.security)]
      : []),
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

export async function waitExit(pid: number, marker: string, timeoutMs: number): Promise<boolean> {
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
