/**
 * Ctrl-C on the commands that start a cluster. The cluster's processes are detached, so the
 * terminal's SIGINT reaches only the command: it must stop them itself (and, for chaos, heal the
 * fault it holds) before it exits with 130.
 */
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { type ClusterFile, isOurProcess } from "../../nodes/cli/cluster-file.js";
import { down } from "../../nodes/cli/local-cluster.js";
import { waitUntil } from "../../nodes/cli/wait.js";
import { type CliRun, runCli } from "../kit/cli-process.js";
import { freePortBase } from "./harness.js";

/** Every process cluster.json lists now, with its pid. */
function listed(dir: string): Array<{ id: string; pid: number }> {
  try {
    const c = JSON.parse(readFileSync(join(dir, "cluster.json"), "utf8")) as ClusterFile;
    return [...c.nats, ...c.sinks, ...(c.postgres ?? []), ...c.coordinators, ...c.workers];
  } catch {
    return [];
  }
}

/** A process's state letter from /proc (`T`: stopped), or null when it is gone. */
function stateOf(pid: number): string | null {
  try {
    return /^State:\s+(\S)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? null;
  } catch {
    return null;
  }
}

describe("Ctrl-C (real processes)", () => {
  const dirs: string[] = [];
  const runs: CliRun[] = [];
  afterEach(async () => {
    for (const r of runs.splice(0))
      if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill("SIGKILL");
    for (const d of dirs.splice(0)) {
      await down(d).catch(() => undefined);
      rmSync(d, { recursive: true, force: true });
    }
  });

  /** Starts `args` in a fresh folder, waits until `ready`, and sends it SIGINT. */
  async function interrupt(
    args: (dir: string, portBase: number) => string[],
    what: string,
    ready: (stdout: string, dir: string) => boolean,
  ) {
    const dir = mkdtempSync(join(tmpdir(), "sluice-interrupt-"));
    dirs.push(dir);
    const run = runCli(args(dir, await freePortBase()));
    runs.push(run);
    const seen = new Map<number, string>();
    await waitUntil(
      what,
      90_000,
      async () => {
        for (const p of listed(dir)) seen.set(p.pid, p.id);
        return ready(run.output().stdout, dir) ? true : undefined;
      },
      200,
    );
    for (const p of listed(dir)) seen.set(p.pid, p.id);
    expect(seen.size).toBeGreaterThanOrEqual(8);
    run.child.kill("SIGINT");
    const r = await run.done;
    const left = [...seen].filter(([pid]) => isOurProcess(pid, dir)).map(([, id]) => id);
    return { r, left };
  }

  it("sluice demo stops its load and its whole cluster", async () => {
    const { r, left } = await interrupt(
      (dir, portBase) => ["demo", "--dir", dir, "--port-base", String(portBase), "--count", "1000000"],
      "the load's progress",
      (out) => /published \d+\/1000000/.test(out),
    );
    expect(r.code).toBe(130);
    expect(r.stderr).toContain("interrupted; stopping the load and the cluster");
    expect(r.stdout).toContain("[demo] interrupted: no verdict");
    expect(left).toEqual([]);
  }, 180_000);

  it("sluice chaos heals the fault it holds and stops the cluster it started", async () => {
    const { r, left } = await interrupt(
      (dir, portBase) => [
        ...["chaos", "--dir", dir, "--port-base", String(portBase)],
        ...["--scenario", "worker-pause", "--duration", "120"],
      ],
      "a worker stopped by the fault",
      (_, dir) => listed(dir).some((p) => stateOf(p.pid) === "T"),
    );
    expect(r.code).toBe(130);
    // The script was interrupted in its hold and healed on its way out (exit 130), not after it.
    expect(r.stdout).toMatch(/worker-pause script exited 130[^\n]*\n[^\n]*healed worker-pause/);
    expect(r.stderr).toContain("sluice chaos: interrupted: no verdict");
    expect(left).toEqual([]);
  }, 180_000);
});
