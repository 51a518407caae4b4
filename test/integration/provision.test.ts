import { jetstreamManager, StorageType } from "@nats-io/jetstream";
import { afterEach, describe, expect, it } from "vitest";
import { provision } from "../../shared/adapters/nats/provision.js";
import { parseConfig } from "../../shared/contract/config.js";
import { ErrorCode, isSluiceError } from "../../shared/contract/errors.js";
import { inputStream } from "../../shared/contract/wire.js";
import { startTestCluster, type TestCluster } from "./harness.js";

describe("provision (real 3-node NATS cluster)", () => {
  let tc: TestCluster | undefined;
  afterEach(async () => {
    await tc?.stop();
    tc = undefined;
  });

  it("keeps a stream of its own layout and refuses one whose subjects another layout made", async () => {
    tc = await startTestCluster({ workers: 0, coordinators: 0 });
    // Provisioning again what the cluster already has is a no-op.
    await provision(tc.nc, tc.cfg, 3);

    // A stream left by a layout that kept the key in the subject: its records would never reach
    // a consumer filtered on `sluice.in.old.<shard>`, so provisioning must not adopt it.
    const cfg = parseConfig({ pipelines: [{ name: "old", shards: 4, replicas: 1 }] });
    const jsm = await jetstreamManager(tc.nc);
    await jsm.streams.add({
      name: inputStream(cfg.pipelines[0]!, 0),
      subjects: ["sluice.in.old.>"],
      storage: StorageType.File,
      num_replicas: 1,
    });
    const err = await provision(tc.nc, cfg, 3).then(
      () => null,
      (e: unknown) => e,
    );
    expect(isSluiceError(err, ErrorCode.InvalidConfig)).toBe(true);
    expect((err as Error).message).toContain("sluice.in.old.>");
    expect((err as Error).message).toContain("ingest.old.*");
  });
});
