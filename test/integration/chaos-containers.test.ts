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
        expect(r).toMatchObject({ lost: 0, duplicated: 0, unexpected: 0, order_violations: 0, ok: true });
        // Read = acknowledged plus any timed-out publishes that did land.
        expect(r.read).toBeGreaterThanOrEqual(r.acknowledged);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
    240_000,
  );
});
