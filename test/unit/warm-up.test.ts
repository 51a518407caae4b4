import { describe, expect, it } from "vitest";
import { warmUpWorker } from "../../nodes/worker/warm-up.js";
import { parseConfig } from "../../shared/contract/config.js";
import { systemScheduler } from "../../shared/contract/ports.js";

describe("warmUpWorker", () => {
  it("plays a lease and a prepared hand-off to the end on in-memory ports", async () => {
    const cfg = parseConfig({});
    const r = await warmUpWorker({
      timing: cfg.timing,
      settings: cfg.worker,
      scheduler: systemScheduler,
      recordsPerLease: 300,
    });
    expect(r).toEqual({ records: 600, completed: true });
  });
});
