/**
 * The worker's keep-alive thread against a real 3-node NATS cluster: quiet while the event
 * loop heartbeats, re-sending the last heartbeat (without a reply subject) while the loop is
 * stalled, and stopping at the stall limit. The stalls are real: the test's own event loop is
 * blocked, the way a long run of batch work blocks a worker's.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import type { Msg } from "@nats-io/transport-node";
import { afterEach, describe, expect, it } from "vitest";
import { waitUntil } from "../../nodes/cli/wait.js";
import { HeartbeatKeepAlive, type StallReport } from "../../nodes/worker/heartbeat-keep-alive.js";
import type { Heartbeat } from "../../shared/contract/ownership.js";
import { ControlSubjects } from "../../shared/contract/wire.js";
import { startTestCluster, type TestCluster } from "./harness.js";

/** Blocks this thread's event loop for `ms`, without spinning a core. */
function stallLoop(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

describe("HeartbeatKeepAlive (real 3-node NATS cluster)", () => {
  let tc: TestCluster | undefined;
  let ka: HeartbeatKeepAlive | undefined;
  let beater: ReturnType<typeof setInterval> | undefined;
  afterEach(async () => {
    clearInterval(beater);
    await ka?.stop();
    ka = undefined;
    await tc?.stop();
    tc = undefined;
  });

  it("heartbeats for a stalled event loop, up to the stall limit, and is quiet otherwise", async () => {
    tc = await startTestCluster({ workers: 0, coordinators: 0 });
    const worker = `w-keep-alive-${process.pid}`;
    const got: Array<{ hb: Heartbeat; reply: boolean }> = [];
    const sub = tc.nc.subscribe(ControlSubjects.heartbeat, {
      callback: (err, m: Msg) => {
        if (err) return;
        const hb = m.json<Heartbeat>();
        if (hb.worker === worker) got.push({ hb, reply: m.reply !== undefined && m.reply !== "" });
      },
    });
    await tc.nc.flush();
    const stalls: StallReport[] = [];
    const heartbeatMs = 100;
    const stallLimitMs = 1_000;
    ka = new HeartbeatKeepAlive({
      servers: tc.file().nats.map((n) => n.url),
      name: "keep-alive-test",
      heartbeatMs,
      stallLimitMs,
      onStall: (s) => stalls.push(s),
      script: resolve("dist/nodes/worker/keep-alive-thread.js"),
    });
    await ka.start();
    await ka.start(); // idempotent
    const hb = (sentAt: number): Heartbeat => ({
      worker,
      capacity: 1,
      held: { "demo.3": 7 },
      leaving: false,
      sentAt,
    });

    // The loop's heartbeat timer, as in a worker: it fires only while the loop is free.
    const beats: number[] = [];
    const beat = (): void => {
      beats.push(Date.now());
      ka?.beat(hb(beats[beats.length - 1]!));
    };
    beat();
    beater = setInterval(beat, heartbeatMs);

    // 1. The loop beats for 0.6 s: no keep-alive while it beats on time. A busy test machine
    // can still delay this loop's timer past 1.5 intervals, and then a keep-alive is due: each
    // one must come at least an interval after the loop's last beat (the thread learns of a
    // beat a little after it is sent).
    await new Promise((done) => setTimeout(done, 600));
    await tc.nc.flush();
    for (const g of got) {
      const lastBeat = Math.max(...beats.filter((b) => b <= g.hb.sentAt));
      expect(g.hb.sentAt - lastBeat).toBeGreaterThanOrEqual(heartbeatMs);
    }
    got.length = 0;

    // 2. The loop stalls for 0.7 s, then beats again.
    beat();
    const stallFrom = Date.now();
    stallLoop(700);
    const stallTo = Date.now();
    beat();
    await waitUntil("the stall report", 10_000, () => (stalls.length > 0 ? true : undefined));
    await tc.nc.flush();
    // Due 1.5 intervals after the last beat, then every interval: about 5 in 0.7 s.
    expect(got.length).toBeGreaterThanOrEqual(3);
    expect(got.length).toBeLessThanOrEqual(6);
    for (const g of got) {
      expect(g.reply).toBe(false); // membership only: no grant can answer it
      expect(g.hb.held).toEqual({ "demo.3": 7 });
      expect(g.hb.sentAt).toBeGreaterThanOrEqual(stallFrom + heartbeatMs * 1.5);
      expect(g.hb.sentAt).toBeLessThanOrEqual(stallTo);
    }
    expect(stalls[0]).toMatchObject({ keepAlives: got.length, expired: false });
    expect(stalls[0]!.stalledMs).toBeGreaterThanOrEqual(700);

    // 3. The loop stalls past the limit: keep-alives stop at it.
    got.length = 0;
    beat();
    const longFrom = Date.now();
    stallLoop(stallLimitMs + 600);
    beat();
    await waitUntil("the second stall report", 10_000, () => (stalls.length > 1 ? true : undefined));
    await tc.nc.flush();
    expect(got.length).toBeGreaterThanOrEqual(3);
    for (const g of got) expect(g.hb.sentAt - longFrom).toBeLessThanOrEqual(stallLimitMs + 50);
    expect(stalls[1]).toMatchObject({ keepAlives: got.length, expired: true });

    // 4. Stopped, it sends nothing more, even for a stalled loop.
    await ka.stop();
    await ka.stop(); // idempotent
    got.length = 0;
    stallLoop(500);
    await tc.nc.flush();
    expect(got).toEqual([]);
    sub.unsubscribe();
  });

  it("reports a thread that ends on its own, and still stops", async () => {
    // A thread that comes up and then dies, as a crashed keep-alive would.
    const dir = mkdtempSync(join(tmpdir(), "sluice-keep-alive-"));
    const script = join(dir, "dies.mjs");
    writeFileSync(
      script,
      'import { parentPort } from "node:worker_threads";\nparentPort.postMessage({ type: "ready" });\nsetTimeout(() => process.exit(3), 50);\n',
    );
    const ended: Error[] = [];
    try {
      ka = new HeartbeatKeepAlive({
        servers: [],
        name: "keep-alive-test",
        heartbeatMs: 100,
        stallLimitMs: 1_000,
        onEnded: (err) => ended.push(err),
        script,
      });
      await ka.start();
      await waitUntil("the thread's end reported", 10_000, () => (ended.length > 0 ? true : undefined));
      expect(ended[0]!.message).toContain("exited (3)");
      ka.beat({ worker: "w", capacity: 1, held: {}, leaving: false, sentAt: Date.now() }); // no throw
      await ka.stop(); // resolves although the thread is gone
      expect(ended).toHaveLength(1);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
