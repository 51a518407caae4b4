/**
 * `sluice up` refuses a directory whose streams or sink belong to another cluster
 * (`cluster-guards.ts`): its shards would wait at checkpoints of streams it no longer serves
 * while new records went unwritten. Refused, it leaves nothing running; started the way its
 * data was made, it serves every record as before.
 */
import { execFile } from "node:child_process";
import { readdirSync, readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { jetstreamManager } from "@nats-io/jetstream";
import { afterEach, describe, expect, it } from "vitest";
import { cliScript, connectCluster, openSinkInspector } from "../../nodes/cli/cluster-file.js";
import { addWorker, down, removeWorker, up } from "../../nodes/cli/local-cluster.js";
import { verify } from "../../nodes/cli/verify.js";
import { waitUntil } from "../../nodes/cli/wait.js";
import { provision } from "../../shared/adapters/nats/provision.js";
import { ErrorCode } from "../../shared/contract/errors.js";
import { inputStream } from "../../shared/contract/wire.js";
import { startTestCluster, testConfig } from "./harness.js";

/** PIDs of the processes whose command line names `dir` (every node of a local cluster does). */
function processesUnder(dir: string): number[] {
  const pids: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${e}/cmdline`, "utf8").includes(dir)) pids.push(Number(e));
    } catch {
      // exited meanwhile
    }
  }
  return pids;
}

/** A plain cluster's directory holding `count` committed records; stopped. */
async function directoryWithRecords(
  count: number,
): Promise<{ dir: string; portBase: number; ackLog: string }> {
  const tc = await startTestCluster({ workers: 1, coordinators: 1 });
  try {
    const load = tc.load(count, 0);
    await load.done;
    await tc.waitCommitted(count);
    const httpBase = tc.file().httpPortBase;
    if (httpBase === undefined) throw new Error("cluster.json names no port base");
    return { dir: tc.dir, portBase: httpBase - 6000, ackLog: load.ackLog };
  } finally {
    await tc.stop();
  }
}

describe("sluice up on a directory whose streams or sink belong to another cluster", () => {
  const dirs: string[] = [];
  afterEach(async () => {
    for (const dir of dirs.splice(0)) await down(dir).catch(() => undefined);
  });

  it("refuses to switch a directory's security mode, and starts it in its own", async () => {
    const d = await directoryWithRecords(300);
    dirs.push(d.dir);
    const opts = { dir: d.dir, workers: 1, coordinators: 1, portBase: d.portBase, config: testConfig() };
    const refused = await up(opts).then(
      () => null,
      (e: unknown) => e as { code?: string; message: string },
    );
    expect(refused?.code).toBe(ErrorCode.InvalidConfig);
    expect(refused?.message).toContain("started with --insecure");
    expect(processesUnder(d.dir)).toEqual([]);

    const c = await up({ ...opts, insecure: true });
    const nc = await connectCluster(c, "reader", "sluice-test");
    const sink = openSinkInspector(c, nc);
    try {
      const report = await verify(sink, "demo", d.ackLog);
      expect(report).toMatchObject({ ok: true, lost: 0, duplicated: 0 });
    } finally {
      await sink.close();
      await nc.close();
    }
  }, 180_000);

  it("refuses a sink committed past the ends of the cluster's streams, and stops what it started", async () => {
    const d = await directoryWithRecords(300);
    dirs.push(d.dir);
    // The store goes, the sink stays: the streams start empty while the sink's checkpoints do not.
    rmSync(join(d.dir, "nats"), { recursive: true, force: true });
    const refused = await up({
      dir: d.dir,
      workers: 1,
      coordinators: 1,
      portBase: d.portBase,
      config: testConfig(),
      insecure: true,
    }).then(
      () => null,
      (e: unknown) => e as { code?: string; message: string },
    );
    expect(refused?.code).toBe(ErrorCode.InvalidConfig);
    expect(refused?.message).toMatch(/sink\.db\) holds checkpoints of other streams .* ends at 0/);
    expect(processesUnder(d.dir)).toEqual([]);
  }, 180_000);

  it("a running cluster whose stream is deleted and made again shows every shard waiting, with why", async () => {
    const tc = await startTestCluster({ workers: 2, coordinators: 1 });
    try {
      const load = tc.load(300, 0);
      await load.done;
      await tc.waitCommitted(300);
      const jsm = await jetstreamManager(tc.nc);
      const p = tc.cfg.pipelines[0]!;
      await jsm.streams.delete(inputStream(p, 0));
      await provision(tc.nc, tc.cfg, 3);
      const waiting = await waitUntil(
        "every shard reported waiting",
        60_000,
        async () => {
          const w = (await tc.status()).stages.waiting;
          return Object.keys(w).length === p.shards ? w : undefined;
        },
        200,
      );
      for (const w of Object.values(waiting))
        expect(w.reason).toMatch(/^checkpoint at \d+, but the stream ends at 0: /);
    } finally {
      await tc.stop();
    }
  }, 180_000);

  it("records the stream's limits removed before they were committed are reported by the shards' next owner", async () => {
    const tc = await startTestCluster({ workers: 1, coordinators: 1 });
    try {
      await tc.load(300, 0).done;
      await tc.waitCommitted(300);
      // No owner while 300 more records arrive; then all but the last 100 are purged, as a
      // stream's max_age or max_msgs would remove them.
      await removeWorker(tc.dir, "w1");
      await tc.load(300, 0).done;
      const jsm = await jetstreamManager(tc.nc);
      const p = tc.cfg.pipelines[0]!;
      await jsm.streams.purge(inputStream(p, 0), { keep: 100 });
      const { firstSeq } = await jsm.streams
        .info(inputStream(p, 0))
        .then((si) => ({ firstSeq: si.state.first_seq }));
      expect(firstSeq).toBe(501);
      const w = addWorker(tc.dir);
      const reports = await waitUntil(
        "every shard's report of the removed records",
        60_000,
        async () => {
          const lines = tc
            .logOf(w.id)
            .split("\n")
            .filter((l) => l.includes("the stream no longer holds sequences"))
            .map(
              (l) =>
                JSON.parse(l) as {
                  shard: string;
                  checkpointSeq: number;
                  streamFirstSeq: number;
                  msg: string;
                },
            );
          return lines.length >= p.shards ? lines : undefined;
        },
        200,
      );
      for (const r of reports) {
        expect(r.streamFirstSeq).toBe(501);
        expect(r.checkpointSeq).toBeLessThanOrEqual(300);
        expect(r.msg).toMatch(
          new RegExp(
            `^the stream no longer holds sequences ${r.checkpointSeq + 1} to 500, after this shard's checkpoint`,
          ),
        );
      }
      expect(new Set(reports.map((r) => r.shard)).size).toBe(p.shards);
      // The shards go on from the first record the stream holds.
      await tc.waitCommitted(400);
    } finally {
      await tc.stop();
    }
  }, 180_000);

  it("sluice provision refuses an output stream sink committed past the input stream's end", async () => {
    const tc = await startTestCluster({ workers: 1, coordinators: 1, sink: "jetstream" });
    try {
      const load = tc.load(300, 0);
      await load.done;
      await tc.waitCommitted(300);
      const provisionCli = () =>
        promisify(execFile)(
          process.execPath,
          [
            cliScript,
            "provision",
            "--servers",
            tc
              .file()
              .nats.map((n) => n.url)
              .join(","),
            "--config",
            tc.file().config,
          ],
          { timeout: 60_000 },
        ).then(
          () => ({ code: 0, stderr: "" }),
          (e: { code: number; stderr: string }) => e,
        );
      // The cluster as it is: its sink and streams agree.
      expect(await provisionCli()).toEqual({ code: 0, stderr: "" });
      await (await jetstreamManager(tc.nc)).streams.delete(inputStream(tc.cfg.pipelines[0]!, 0));
      const refused = await provisionCli();
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(
        /the sink \(jetstream\) holds checkpoints of other streams .*\[INVALID_CONFIG\]/,
      );
    } finally {
      await tc.stop();
    }
  }, 180_000);
});
