import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { runChaos } from "../../nodes/cli/chaos.js";
import { dockerAvailable } from "../../nodes/cli/nats-containers.js";
import { freePortBase } from "./harness.js";

const docker = await dockerAvailable();

describe("chaos with the NATS nodes in containers (real Docker, host networking)", () => {
  it.skipIf(!docker)(
    "container kill and pause of NATS nodes under load: nothing lost, duplicated or out of order",
    async () => {
      const dir = mkdtempSync(join(tmpdir(), "sluice-chaos-ct-"));
      let passed = false;
      try {
        const r = await runChaos({
          dir,
          scenario: "nats-kill,nats-pause",
          durationS: 25,
          seed: 11,
          rate: 600,
          portBase: await freePortBase(),
          natsRuntime: "container",
          keep: false,
          log: () => {},
        });
        expect(r.faults.map((f) => f.type)).toEqual(expect.arrayContaining(["nats-kill", "nats-pause"]));
        expect(r.faults.every((f) => f.script_exit === 0)).toBe(true);
        expect(r.acknowledged).toBeGreaterThan(5_000);
        // sluice loses nothing the stream still holds; a record the broker acknowledged and then
        // dropped on a node kill (seen once with nats-server 2.9.10) is reported, not hidden.
        if (r.lost_in_stream > 0)
          console.error(`broker lost ${r.lost_in_stream} acknowledged records: ${r.lost_ids.join(", ")}`);
        expect(r.lost - r.lost_in_stream).toBe(0);
        expect(r).toMatchObject({ duplicated: 0, unexpected: 0, order_violations: 0 });
        // Read = acknowledged plus any timed-out publishes that did land.
        expect(r.read).toBeGreaterThanOrEqual(r.acknowledged);
        passed = true;
      } finally {
        // A failed run keeps its logs, sink and ack log for diagnosis.
        if (passed) rmSync(dir, { recursive: true, force: true });
        else console.error(`chaos run kept in ${dir}`);
      }
    },
    240_000,
  );
});
