/**
 * nats-server as a Docker container (host network): image build, start from a process that then
 * exits (the container must outlive it), and the chaos operations pause, unpause, kill, restart.
 * Skipped only when no Docker daemon answers (run deploy/docker/setup-docker.sh first).
 */
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { promisify } from "node:util";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { checkedNatsServer } from "../../nodes/cli/nats-binary.js";
import {
  containerRunning,
  containerStatus,
  dockerAvailable,
  ensureNatsImage,
  killContainer,
  type NatsContainerSpec,
  natsImage,
  pauseContainer,
  removeContainer,
  restartContainer,
  unpauseContainer,
} from "../../nodes/cli/nats-containers.js";
import { waitUntil } from "../../nodes/cli/wait.js";
import { freePort } from "../kit/free-port.js";

const available = await dockerAvailable();
const run = promisify(execFile);

/** HTTP status of the monitor's /healthz; rejects if nothing answers within timeoutMs. */
async function healthz(monitorPort: number, timeoutMs: number, query = ""): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${monitorPort}/healthz${query}`, {
    signal: AbortSignal.timeout(timeoutMs),
  });
  await res.body?.cancel();
  return res.status;
}

const waitHealthy = (monitorPort: number, timeoutMs = 15_000) =>
  waitUntil("nats /healthz 200", timeoutMs, async () =>
    (await healthz(monitorPort, 1_000, "?js-enabled-only=true")) === 200 ? true : undefined,
  );

describe.sequential("nats-server in Docker containers", () => {
  const suffix = randomBytes(4).toString("hex");
  const name = `sluice-it-nats-${suffix}`;
  let dir = "";
  let spec: NatsContainerSpec;
  let clientPort = 0;
  let monitorPort = 0;
  let containerId = "";

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), "sluice-it-docker-"));
    clientPort = await freePort();
    monitorPort = await freePort();
    spec = {
      name,
      configFile: join(dir, "n1.conf"),
      storeDir: join(dir, "store"),
      logFile: join(dir, "logs", "n1.log"),
    };
    await writeFile(
      spec.configFile,
      [
        `server_name: ${name}`,
        `listen: "127.0.0.1:${clientPort}"`,
        `http: "127.0.0.1:${monitorPort}"`,
        `jetstream { store_dir: "${spec.storeDir}" }`,
        "",
      ].join("\n"),
    );
  });

  afterAll(async () => {
    if (available) await removeContainer(containerId || name);
    // The store was written by the container's root; this test runs as root too.
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it.skipIf(!available)("builds the FROM-scratch image", async () => {
    const t0 = performance.now();
    expect(await ensureNatsImage()).toBe(natsImage());
    console.log(`ensureNatsImage: ${Math.round(performance.now() - t0)} ms`);
    const { stdout } = await run("docker", ["run", "--rm", "--network", "host", natsImage(), "--version"]);
    expect(stdout).toContain(`nats-server: v${checkedNatsServer().version}`);
  });

  it.skipIf(!available)("starts a container that outlives the process that started it", async () => {
    // A separate Node process starts the container and must exit by itself (no handle such as a
    // log stream may keep it alive); the container must go on (Ryuk disabled). It loads the
    // compiled module, which test/global-setup.ts has just built.
    const modulePath = resolve("dist/nodes/cli/nats-containers.js");
    const script = [
      `const m = await import(${JSON.stringify(modulePath)});`,
      "const t0 = performance.now();",
      "const r = await m.startNatsContainer(JSON.parse(process.env.SPEC));",
      "console.log(JSON.stringify({ ...r, ms: Math.round(performance.now() - t0) }));",
    ].join("\n");
    const t0 = performance.now();
    const { stdout } = await run(process.execPath, ["--input-type=module", "-e", script], {
      env: { ...process.env, SPEC: JSON.stringify(spec) },
      timeout: 60_000,
    });
    const started = JSON.parse(stdout.trim().split("\n").at(-1)!) as { containerId: string; ms: number };
    console.log(
      `startNatsContainer: ${started.ms} ms in the child; child process lifetime ${Math.round(performance.now() - t0)} ms`,
    );
    containerId = started.containerId;
    expect(containerId).toMatch(/^[0-9a-f]{64}$/);

    expect(await containerRunning(containerId)).toBe(true);
    await waitHealthy(monitorPort);
    const log = await waitUntil("log followed to the log file", 5_000, async () => {
      const text = await readFile(spec.logFile, "utf8");
      return text.includes("Server is ready") ? text : undefined;
    });
    expect(log).toContain(`Listening for client connections on 127.0.0.1:${clientPort}`);
  });

  it.skipIf(!available)("pause makes the server unresponsive within 2 s; unpause heals it", async () => {
    await pauseContainer(containerId);
    expect(await containerStatus(containerId)).toBe("paused");

    const t0 = Date.now();
    await expect(healthz(monitorPort, 2_000)).rejects.toThrow();
    await expect(
      connect({ servers: `127.0.0.1:${clientPort}`, timeout: 1_500, reconnect: false }),
    ).rejects.toThrow();
    expect(Date.now() - t0).toBeLessThan(2 * 2_000 + 500); // each attempt gave up within its 2 s budget

    await unpauseContainer(containerId);
    expect(await containerStatus(containerId)).toBe("running");
    await waitHealthy(monitorPort, 5_000);
  });

  it.skipIf(!available)("kill stops it; restart brings it back with its JetStream store", async () => {
    const nc = await connect({ servers: `127.0.0.1:${clientPort}`, timeout: 5_000 });
    try {
      const jsm = await jetstreamManager(nc);
      await jsm.streams.add({ name: "CT", subjects: ["ct.>"] });
      const js = jetstream(nc);
      for (let i = 0; i < 3; i++) await js.publish(`ct.${i}`, new TextEncoder().encode(String(i)));
    } finally {
      await nc.close();
    }

    await killContainer(containerId);
    await waitUntil("container stopped", 10_000, async () =>
      (await containerRunning(containerId)) ? undefined : true,
    );
    expect(await containerStatus(containerId)).toBe("exited");
    await expect(healthz(monitorPort, 2_000)).rejects.toThrow();

    const t0 = performance.now();
    await restartContainer(containerId);
    await waitHealthy(monitorPort);
    console.log(`restart to healthy: ${Math.round(performance.now() - t0)} ms`);
    expect(await containerRunning(containerId)).toBe(true);

    // The bind-mounted store_dir kept the stream across the crash.
    const nc2 = await connect({ servers: `127.0.0.1:${clientPort}`, timeout: 5_000 });
    try {
      const jsm = await jetstreamManager(nc2);
      const si = await waitUntil("stream CT recovered", 10_000, async () => {
        const info = await jsm.streams.info("CT");
        return info.state.messages === 3 ? info : undefined;
      });
      expect(si.state.messages).toBe(3);
    } finally {
      await nc2.close();
    }

    // The restarted run's output is appended after the first run's, not duplicated.
    const log = await waitUntil("second run logged", 5_000, async () => {
      const text = await readFile(spec.logFile, "utf8");
      return text.split("Server is ready").length - 1 >= 2 ? text : undefined;
    });
    expect(log.split("Starting nats-server").length - 1).toBe(2);
  });

  it.skipIf(!available)("removeContainer removes it and is idempotent", async () => {
    await removeContainer(containerId);
    expect(await containerStatus(containerId)).toBeNull();
    expect(await containerRunning(containerId)).toBe(false);
    await removeContainer(containerId);
  });
});
