import { describe, expect, it } from "vitest";
import { parseConfig } from "../../shared/config.js";
import { systemScheduler } from "../../shared/ports.js";
import { warmUpWorker } from "../../shared/worker/warm-up.js";

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
