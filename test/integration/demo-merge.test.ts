/**
 * `sluice demo --merge` end to end, as a user runs it, with a small count: a real 3-node NATS
 * cluster, two branches published at once with late records, a worker SIGKILLed; the demo's own
 * checks (exactly-once per branch, late flags, the merge table by the policy before and after
 * `late reconcile`) must all hold, and it must say so and exit 0.
 */
import { execFile } from "node:child_process";
import { existsSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { afterEach, describe, expect, it } from "vitest";
import { down } from "../../nodes/cli/local-cluster.js";
import { freePortBase } from "./harness.js";

const run = promisify(execFile);
const MAIN = new URL("../../dist/nodes/cli/main.js", import.meta.url).pathname;

describe("sluice demo --merge (real 3-node NATS cluster)", () => {
  let dir: string | undefined;
  afterEach(async () => {
    // The demo stops its cluster itself; this is for a demo that was cut short.
    if (dir && existsSync(join(dir, "cluster.json"))) await down(dir).catch(() => undefined);
    dir = undefined;
  });

  it("converges by the policy through a SIGKILL, reconciles the late records, and exits 0", async () => {
    dir = join(mkdtempSync(join(tmpdir(), "sluice-it-")), "demo");
    const portBase = await freePortBase();
    const { stdout } = await run(
      "node",
      [
        MAIN,
        "demo",
        "--merge",
        "--count",
        "4000",
        "--rate",
        "2000",
        "--dir",
        dir,
        "--port-base",
        String(portBase),
      ],
      { timeout: 240_000, maxBuffer: 16 * 1024 * 1024 },
    );
    expect(stdout).toMatch(/\[demo\] [\d,]+\/4,000 committed .*convergence 2026-\d\d-\d\dT/);
    expect(stdout).toMatch(/\[demo\] SIGKILL worker w1/);
    expect(stdout.match(/EXACTLY-ONCE: OK/g)).toHaveLength(2);
    expect(stdout).toMatch(/late reconcile: [1-9]\d* late record\(s\) applied; a second run applied 0/);
    expect(stdout).toContain("[demo] verdict: OK");
  }, 300_000);
});
