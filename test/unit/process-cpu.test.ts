/** The benchmark's CPU accounting by role: a process counts with what runs and ran under it. */
import { spawn } from "node:child_process";
import { afterAll, describe, expect, it } from "vitest";
import { clusterCpu, cpuPerRecord } from "../../nodes/bench/process-cpu.js";
import type { ClusterFile } from "../../nodes/cli/cluster-file.js";
import { waitUntil } from "../../nodes/cli/wait.js";

const busy = (ms: number) => `const e = Date.now() + ${ms}; while (Date.now() < e) {}`;

describe("clusterCpu", () => {
  // A wrapper (the shell) whose child burns 400 ms of CPU and exits (reaped by the shell, as
  // PostgreSQL's postmaster reaps an ended backend), then another that is still burning.
  const wrapper = spawn("sh", ["-c", `node -e '${busy(400)}'; node -e '${busy(60_000)}' & wait`], {
    stdio: "ignore",
    detached: true,
  });
  afterAll(() => {
    // The wrapper leads its own process group (detached): ends the shell and its busy child.
    if (wrapper.pid !== undefined) process.kill(-wrapper.pid, "SIGKILL");
  });

  it("counts a process's children, running and reaped, under its role", async () => {
    const pid = wrapper.pid!;
    const cluster = { nats: [], sinks: [], coordinators: [], workers: [{ pid }] } as unknown as ClusterFile;
    const before = clusterCpu(cluster);
    await waitUntil("the first child to end and the second to run", 10_000, async () =>
      clusterCpu(cluster).workers - before.workers >= 0.6 ? true : undefined,
    );
    const after = clusterCpu(cluster);
    expect(after.workers - before.workers).toBeGreaterThanOrEqual(0.6);
    expect(after.nats).toBe(0);
    expect(after.sink).toBe(0);
    expect(after.producer).toBeGreaterThan(0);
  });

  it("turns two readings into microseconds per record and a total", () => {
    const zero = { nats: 0, workers: 0, sink: 0, coordinators: 0, producer: 0 };
    const x = cpuPerRecord(
      zero,
      { nats: 1, workers: 0.5, sink: 0.25, coordinators: 0, producer: 0.05 },
      10_000,
    );
    expect(x).toEqual({ nats: 100, workers: 50, sink: 25, coordinators: 0, producer: 5, total: 180 });
  });
});
