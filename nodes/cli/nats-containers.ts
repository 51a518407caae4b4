/**
 * nats-server nodes as Docker containers, plus the chaos operations the local cluster and the
 * fault tests need on them (kill, pause, restart, remove).
 *
 * Why containers: `docker pause` freezes a node with the cgroup freezer (closer to a VM stall than
 * SIGSTOP), and a container is one handle for a node's process tree. Why host networking: this
 * machine's dockerd runs without a bridge or iptables (deploy/docker/setup-docker.sh), and all
 * traffic stays on 127.0.0.1, so the nats configs used for plain processes work unchanged.
 *
 * Starting uses testcontainers (wait for "Server is ready"); every other operation is one docker
 * CLI call through execFile (no shell strings), which keeps working after the process that
 * started the container has exited. Containers are NOT reaped when this process exits (Ryuk is
 * disabled): callers own their lifetime and must `removeContainer` them.
 */
import { execFile, spawn } from "node:child_process";
import { once } from "node:events";
import { closeSync, constants, openSync } from "node:fs";
import { access, appendFile, chmod, copyFile, mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { delimiter, dirname, isAbsolute, join } from "node:path";
import type { Readable } from "node:stream";
import { setTimeout as delay } from "node:timers/promises";
import { promisify } from "node:util";
import { checkedNatsServer } from "./nats-binary.js";

// testcontainers reads these when it talks to Docker. Without RYUK_DISABLED it tries to start the
// reaper image (not pullable here, and it would remove our containers when this process exits);
// without HOST_OVERRIDE it pulls an image from a public registry to find the gateway address.
// Set before testcontainers is loaded (it is imported lazily, in startNatsContainer).
process.env.TESTCONTAINERS_RYUK_DISABLED ??= "true";
process.env.TESTCONTAINERS_HOST_OVERRIDE ??= "127.0.0.1";

const run = promisify(execFile);

/** The locally built image (no registry is reachable: it can only be built here, never pulled). */
/** The local image of the nats-server a local cluster runs (`checkedNatsServer`), by its version. */
export function natsImage(): string {
  return `sluice/nats-server:${checkedNatsServer().version}-local`;
}

/** Label holding a container's host log file, so `restartContainer` can re-attach its log. */
const LOG_FILE_LABEL = "sluice.log-file";

/** Timeout of one docker CLI call, ms. `docker build` gets its own, longer one. */
const DOCKER_CALL_TIMEOUT_MS = 30_000;
/** Time for a node to print "Server is ready" after the container started, ms. */
const STARTUP_TIMEOUT_MS = 30_000;

async function docker(args: string[], timeoutMs = DOCKER_CALL_TIMEOUT_MS): Promise<string> {
  const { stdout } = await run("docker", args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 });
  return stdout.trim();
}

/** True when the docker CLI is installed and its daemon answers (within 5 s). */
export async function dockerAvailable(): Promise<boolean> {
  try {
    await docker(["version", "--format", "{{.Server.Version}}"], 5_000);
    return true;
  } catch {
    return false;
  }
}

/** Absolute path of an executable on PATH (plus the sbin dirs, where Debian puts nats-server). */
async function which(cmd: string): Promise<string> {
  if (isAbsolute(cmd)) return cmd;
  const dirs = [...(process.env.PATH ?? "").split(delimiter), "/usr/local/sbin", "/usr/sbin", "/sbin"];
  for (const dir of dirs) {
    if (!dir) continue;
    const candidate = join(dir, cmd);
    try {
      await access(candidate, constants.X_OK);
      return candidate;
    } catch {}
  }
  throw new Error(`${cmd} not found on PATH (install it: apt-get install -y ${cmd})`);
}

/** Shared libraries (absolute paths) a dynamically linked binary needs, as `ldd` lists them. */
async function sharedLibraries(binary: string): Promise<string[]> {
  let out: string;
  try {
    out = (await run("ldd", [binary])).stdout;
  } catch {
    return []; // "not a dynamic executable": ldd exits non-zero, nothing to copy.
  }
  const libs: string[] = [];
  for (const line of out.split("\n")) {
    // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)";
    // linux-vdso has no file.
    const m = /(?:=>\s*)?(\/\S+)\s+\(0x[0-9a-f]+\)/.exec(line);
    if (m?.[1]) libs.push(m[1]);
  }
  return libs;
}

let imageBuild: Promise<string> | undefined;

/**
 * Builds `natsImage()` unless Docker already has it, and returns its name. The image is FROM scratch:
 * the host's nats-server binary at /nats-server (the entrypoint), the shared libraries `ldd` lists
 * at their own paths, and an empty /tmp. Build < 1 s with the classic builder (DOCKER_BUILDKIT=0:
 * BuildKit wants to pull its frontend). To pick up a new nats-server binary, `docker rmi` the image.
 * Concurrent callers share one build.
 */
export function ensureNatsImage(): Promise<string> {
  imageBuild ??= buildNatsImage().catch((err: unknown) => {
    imageBuild = undefined; // let a later call retry
    throw err;
  });
  return imageBuild;
}

async function buildNatsImage(): Promise<string> {
  try {
    await docker(["image", "inspect", "--format", "{{.Id}}", natsImage()]);
    return natsImage();
  } catch {
    // missing: build it below
  }
  const natsServer = await which(checkedNatsServer().bin);
  const context = await mkdtemp(join(tmpdir(), "sluice-nats-image-"));
  try {
    const rootfs = join(context, "rootfs");
    await mkdir(join(rootfs, "tmp"), { recursive: true });
    // copyFile follows symlinks (the `cp -L` the image needs: libc.so.6 is a symlink on some hosts).
    await copyFile(natsServer, join(rootfs, "nats-server"));
    await chmod(join(rootfs, "nats-server"), 0o755);
    for (const lib of await sharedLibraries(natsServer)) {
      await mkdir(join(rootfs, dirname(lib)), { recursive: true });
      await copyFile(lib, join(rootfs, lib));
    }
    await writeFile(
      join(context, "Dockerfile"),
      ["FROM scratch", "COPY rootfs/ /", 'ENTRYPOINT ["/nats-server"]', ""].join("\n"),
    );
    await run("docker", ["build", "--quiet", "--tag", natsImage(), context], {
      env: { ...process.env, DOCKER_BUILDKIT: "0" },
      timeout: 120_000,
      maxBuffer: 16 * 1024 * 1024,
    });
    return natsImage();
  } finally {
    await rm(context, { recursive: true, force: true });
  }
}

export interface NatsContainerSpec {
  /** Docker container name, unique on this host (e.g. "sluice-n1"). */
  name: string;
  /**
   * Absolute host path of the nats-server config. Bind-mounted read-only at the same path, so
   * paths inside it (store_dir) mean the same in and out of the container. Rewrite it in place
   * (writeFile), not by rename: a file bind mount keeps the old inode.
   */
  configFile: string;
  /** Absolute host path of the JetStream store_dir the config names; created if missing. */
  storeDir: string;
  /** Absolute host path; the container's stdout/stderr are appended to it. */
  logFile: string;
  /** "uid:gid" to run the server as (a per-node uid lets iptables match one node's traffic). */
  user?: string;
  /** Absolute host paths the config refers to (TLS files), bind-mounted read-only at the same path. */
  readOnly?: string[];
}

/**
 * Appends a container's output to logFile from a detached `docker logs --follow` process. Why not
 * testcontainers' withLogConsumer: its stream lives in this process and ends when it exits, while
 * the CLI that starts a cluster exits right away and the container goes on. The follower ends by
 * itself when the container stops or is removed. sinceMs: unix time, ms (for a restart, so the
 * earlier runs' output is not appended again); undefined = the container's whole output.
 */
function followLogs(containerId: string, logFile: string, sinceMs?: number): void {
  const args = ["logs", "--follow"];
  if (sinceMs !== undefined) {
    // docker takes "seconds.nanoseconds"
    args.push("--since", `${Math.floor(sinceMs / 1000)}.${String(sinceMs % 1000).padStart(3, "0")}000000`);
  }
  args.push(containerId);
  const fd = openSync(logFile, "a");
  try {
    const child = spawn("docker", args, { detached: true, stdio: ["ignore", fd, fd] });
    child.on("error", () => {}); // a missing docker CLI already failed the start before this
    child.unref();
  } finally {
    closeSync(fd);
  }
}

/**
 * Starts a nats-server container (host network) from `natsImage()` and resolves once the server has
 * logged "Server is ready" (which follows JetStream start-up), at most 30 s. The image must exist
 * (ensureNatsImage). A stopped container of the same name is replaced; a running one is an error.
 * The container outlives this process.
 */
export async function startNatsContainer(spec: NatsContainerSpec): Promise<{ containerId: string }> {
  for (const [field, path] of [
    ["configFile", spec.configFile],
    ["storeDir", spec.storeDir],
    ["logFile", spec.logFile],
  ] as const) {
    if (!isAbsolute(path)) throw new Error(`NatsContainerSpec.${field} must be an absolute path: ${path}`);
  }
  await access(spec.configFile, constants.R_OK);
  await mkdir(spec.storeDir, { recursive: true });
  await mkdir(dirname(spec.logFile), { recursive: true });

  const existing = await containerStatus(spec.name);
  if (existing === "running" || existing === "paused" || existing === "restarting") {
    throw new Error(`container ${spec.name} is already ${existing}`);
  }
  if (existing !== null) await removeContainer(spec.name);

  const { GenericContainer, Wait } = await import("testcontainers");
  // Startup output, kept only for a failed start: testcontainers removes a container that never
  // got ready, and with it what the server said (a config error, a port in use).
  const startupOutput: string[] = [];
  let startupStream: Readable | undefined;
  let started: Awaited<ReturnType<InstanceType<typeof GenericContainer>["start"]>>;
  try {
    started = await new GenericContainer(natsImage())
      .withNetworkMode("host")
      .withName(spec.name)
      .withLabels({ [LOG_FILE_LABEL]: spec.logFile })
      .withBindMounts([
        { source: spec.configFile, target: spec.configFile, mode: "ro" },
        { source: spec.storeDir, target: spec.storeDir, mode: "rw" },
        ...(spec.readOnly ?? []).map((p) => ({ source: p, target: p, mode: "ro" as const })),
      ])
      .withCommand(["-c", spec.configFile])
      .withUser(spec.user ?? "0:0")
      .withLogConsumer((stream) => {
        startupStream = stream;
        stream.on("data", (chunk: string | Buffer) => startupOutput.push(String(chunk)));
        stream.on("error", () => {});
      })
      // Host networking maps no ports, so the default port wait cannot work: wait for the log line.
      .withWaitStrategy(Wait.forLogMessage(/Server is ready/))
      .withStartupTimeout(STARTUP_TIMEOUT_MS)
      .start();
  } catch (err) {
    // The consumer's stream may trail the wait strategy's: give it up to 1 s to reach its end.
    if (startupStream && !startupStream.readableEnded) {
      await Promise.race([once(startupStream, "end").catch(() => {}), delay(1_000)]);
    }
    startupStream?.destroy();
    await appendFile(spec.logFile, startupOutput.join("")).catch(() => {});
    await removeContainer(spec.name).catch(() => {});
    throw new Error(
      `nats container ${spec.name} did not become ready (see ${spec.logFile}): ${String(err)}`,
      {
        cause: err,
      },
    );
  }
  // From here on the detached follower writes the log (all output, from the start).
  startupStream?.destroy();
  const containerId = started.getId();
  followLogs(containerId, spec.logFile);
  return { containerId };
}

/** Sends a signal (default SIGKILL: a crash, no graceful shutdown) to the container's server. */
export async function killContainer(id: string, signal = "KILL"): Promise<void> {
  await docker(["kill", "--signal", signal, id]);
}

/** Freezes every process of the container (cgroup freezer): sockets stay open, nothing answers. */
export async function pauseContainer(id: string): Promise<void> {
  await docker(["pause", id]);
}

/** Thaws a paused container. */
export async function unpauseContainer(id: string): Promise<void> {
  await docker(["unpause", id]);
}

/**
 * Starts a stopped (killed, exited) container again with its original config, mounts and store,
 * and re-attaches its log file. Does nothing if it is already running or paused. Resolves when
 * the process has started, not when the server is ready: poll its /healthz.
 */
export async function restartContainer(id: string): Promise<void> {
  const status = await containerStatus(id);
  if (status === null) throw new Error(`no such container: ${id}`);
  if (status === "running" || status === "paused" || status === "restarting") return;
  const logFile = await docker(["inspect", "--format", `{{index .Config.Labels "${LOG_FILE_LABEL}"}}`, id]);
  const sinceMs = Date.now(); // host and dockerd share the clock: only this run's output
  await docker(["start", id]);
  if (logFile && logFile !== "<no value>") followLogs(id, logFile, sinceMs);
}

/** Force-removes the container (killing it if running). No error if it does not exist. */
export async function removeContainer(id: string): Promise<void> {
  try {
    await docker(["rm", "--force", id]);
  } catch (err) {
    if (!/No such container/i.test(String((err as { stderr?: string }).stderr ?? err))) throw err;
  }
}

/**
 * Docker's status of a container: "created" | "running" | "paused" | "restarting" | "exited" |
 * "dead" | ..., or null if there is no such container.
 */
export async function containerStatus(id: string): Promise<string | null> {
  try {
    return await docker(["inspect", "--type", "container", "--format", "{{.State.Status}}", id]);
  } catch (err) {
    if (/No such (container|object)/i.test(String((err as { stderr?: string }).stderr ?? err))) return null;
    throw err;
  }
}

/** True while the container's process exists, paused included (as Docker's State.Running). */
export async function containerRunning(id: string): Promise<boolean> {
  const status = await containerStatus(id);
  return status === "running" || status === "paused" || status === "restarting";
}

/** The host PID of the container's server process (0 when it is not running). */
export async function containerPid(id: string): Promise<number> {
  const out = await docker(["inspect", "--format", "{{.State.Pid}}", id]);
  return Number(out.trim()) || 0;
}
