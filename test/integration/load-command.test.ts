/**
 * `sluice load` as a user runs it, against a real cluster: interrupted with Ctrl-C it still
 * logs every record it sent, so `verify` finds none it was not told of; against a cluster that
 * stops answering it gives up after `--stall-timeout` instead of timing out record by record.
 */
import type { ChildProcess } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitUntil } from "../../nodes/cli/wait.js";
import { inputStream } from "../../shared/contract/wire.js";
import { runCli } from "../kit/cli-process.js";
import { startTestCluster, type TestCluster } from "./harness.js";

const lines = (path: string): Array<{ id: string; status: string }> =>
  existsSync(path)
    ? readFileSync(path, "utf8")
        .split("\n")
        .filter((l) => l.length > 0)
        .map((l) => JSON.parse(l) as { id: string; status: string })
    : [];

describe("sluice load (real cluster, real process)", () => {
  let tc: TestCluster;
  const running: ChildProcess[] = [];
  beforeAll(async () => {
    tc = await startTestCluster({ workers: 1, coordinators: 1 });
  }, 120_000);
  afterAll(async () => {
    for (const c of running) if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    await tc?.stop();
  });

  it("Ctrl-C stops the load, confirms the records in flight and logs them all: verify finds nothing unexpected", async () => {
    const ackLog = join(tc.dir, "interrupted.jsonl");
    const run = runCli([
      "load",
      "--dir",
      tc.dir,
      "--count",
      "1000000",
      "--rate",
      "4000",
      "--ack-log",
      ackLog,
    ]);
    running.push(run.child);
    await waitUntil("2,000 confirmations in the ack log", 30_000, async () =>
      lines(ackLog).length >= 2_000 ? true : undefined,
    );
    run.child.kill("SIGINT");
    const r = await run.done;
    expect(r.code).toBe(130);
    expect(r.stderr).toContain("interrupted; confirming the records in flight");
    const m = /published (\d+): (\d+) acked, 0 failed, 0 timed out/.exec(r.stdout);
    expect(m, r.stdout).not.toBeNull();
    const sent = Number(m![1]);
    expect(Number(m![2])).toBe(sent);
    expect(sent).toBeLessThan(1_000_000);
    const logged = lines(ackLog);
    expect(logged.length).toBe(sent);
    expect(new Set(logged.map((l) => l.id)).size).toBe(sent);
    await tc.waitCommitted(sent);
    const v = await tc.verify(ackLog);
    expect({ lost: v.lost, duplicated: v.duplicated, unexpected: v.unexpected, ok: v.ok }).toEqual({
      lost: 0,
      duplicated: 0,
      unexpected: 0,
      ok: true,
    });
  }, 120_000);

  it("gives up after --stall-timeout when no PubAck comes, logging the records still waiting as timed out", async () => {
    // No stream takes the pipeline's subjects any more: every publish is answered "no responders".
    await (await jetstreamManager(tc.nc)).streams.delete(inputStream(tc.cfg.pipelines[0]!, 0));
    const ackLog = join(tc.dir, "stalled.jsonl");
    const t0 = Date.now();
    const run = runCli([
      "load",
      "--dir",
      tc.dir,
      "--count",
      "100000",
      "--ack-log",
      ackLog,
      "--stall-timeout",
      "2000",
    ]);
    running.push(run.child);
    const r = await run.done;
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /no PubAck for 2000 ms; stopped after sending \d+ of 100000 records.*\[UNAVAILABLE\]/,
    );
    // Two seconds of waiting and the sweep after it; re-sending every record in turn would take hours.
    expect(Date.now() - t0).toBeLessThan(30_000);
    const logged = lines(ackLog);
    expect(logged.length).toBeGreaterThan(0);
    expect(logged.every((l) => l.status === "timeout")).toBe(true);
    const m = /published (\d+): 0 acked, 0 failed, (\d+) timed out/.exec(r.stdout);
    expect(m, r.stdout).not.toBeNull();
    expect(Number(m![1])).toBe(logged.length);
    expect(Number(m![2])).toBe(logged.length);
  }, 90_000);
});
