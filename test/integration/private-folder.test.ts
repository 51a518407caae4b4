/**
 * A local cluster starts from a private folder (mode 0700, as /root or any `mktemp -d`), as
 * root or not: as root its NATS nodes run under their own uids, which cannot enter such a
 * folder without the one capability they keep (see `natsUid`). Nothing changes the folders' modes.
 */
import { mkdirSync, mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { jetstream } from "@nats-io/jetstream";
import { afterEach, describe, expect, it } from "vitest";
import { connectCluster, openSinkInspector } from "../../nodes/cli/cluster-file.js";
import { down, up } from "../../nodes/cli/local-cluster.js";
import { waitUntil } from "../../nodes/cli/wait.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import { freePortBase, testConfig } from "./harness.js";

describe("a cluster in a private folder (real 3-node NATS cluster)", () => {
  let parent: string | undefined;
  afterEach(async () => {
    if (parent) {
      await down(join(parent, "cluster")).catch(() => undefined);
      rmSync(parent, { recursive: true, force: true });
    }
    parent = undefined;
  });

  it("starts, commits a record and keeps its parent folder at mode 0700", async () => {
    parent = mkdtempSync(join(tmpdir(), "sluice-private-"));
    expect(statSync(parent).mode & 0o777).toBe(0o700);
    const dir = join(parent, "cluster");
    mkdirSync(dir, { mode: 0o700 });
    const c = await up({
      dir,
      workers: 1,
      coordinators: 1,
      portBase: await freePortBase(),
      config: testConfig(),
    });
    // Secured (the default): the servers read their 0600 keys and configs from the private folder.
    expect(c.security).toBeDefined();
    const nc = await connectCluster(c, "producer", "private-folder-test");
    const sink = openSinkInspector(c, nc);
    try {
      const ack = await jetstream(nc).publish("ingest.demo.alice", encodeRecord({ n: 1 }), {
        msgID: "private-1",
      });
      expect(ack.seq).toBeGreaterThan(0);
      await waitUntil("the record to be committed", 30_000, async () =>
        (await sink.rowCount("demo")) === 1 ? true : undefined,
      );
    } finally {
      await sink.close();
      await nc.close();
    }
    expect(statSync(parent).mode & 0o777).toBe(0o700);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
  });
});
