/**
 * Deduplication by business key on a real 3-node NATS cluster: every order is published twice,
 * under two record ids, to different shards (the business key is not the partition key), while
 * one worker is SIGKILLed and another SIGSTOPped past its lease. The sink must hold exactly one
 * row per order, and the shards' checkpoints count every other copy as a duplicate.
 */
import { jetstream } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { afterEach, describe, expect, it } from "vitest";
import { waitUntil } from "../../nodes/cli/wait.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import { parseConfig } from "../../shared/contract/config.js";
import { Headers, ingestSubject } from "../../shared/contract/wire.js";
import { DUPLICATES_STATE_KEY } from "../../shared/core/sink-rules.js";
import { startTestCluster, type TestCluster, testConfig, waitSettled } from "./harness.js";

const ORDERS = 1_000;

describe("dedupe by business key (real 3-node NATS cluster)", () => {
  let tc: TestCluster | undefined;
  let stopped: number | undefined;
  afterEach(async () => {
    if (stopped !== undefined) process.kill(stopped, "SIGCONT");
    await tc?.stop();
    tc = undefined;
  });

  it("keeps one row per order through a SIGKILL and a SIGSTOP past the lease", async () => {
    const base = testConfig();
    const config = parseConfig({
      ...base,
      pipelines: [{ name: "orders", shards: 8, stages: [{ dedupe: { key: "order_id", window: "1h" } }] }],
    });
    tc = await startTestCluster({ workers: 3, coordinators: 2, config });
    await waitSettled(tc);
    const js = jetstream(tc.nc, { timeout: 10_000 });
    /** Copy `copy` of every order: its own record id, keyed by another customer than the first. */
    const publishCopy = async (copy: number): Promise<void> => {
      for (let i = 0; i < ORDERS; i += 50) {
        await Promise.all(
          Array.from({ length: 50 }, (_, j) => {
            const n = i + j;
            const h = natsHeaders();
            h.set(Headers.msgId, `r-${copy}-${n}`);
            const value = { order_id: `o-${n}`, amount: n, copy };
            return js.publish(ingestSubject("orders", `c${(n + copy * 13) % 97}`), encodeRecord(value), {
              headers: h,
            });
          }),
        );
        await new Promise((r) => setTimeout(r, 40));
      }
    };
    const first = publishCopy(0);
    await waitUntil("a fifth committed", 60_000, async () =>
      (await tc!.sink.rowCount("orders")) >= ORDERS / 5 ? true : undefined,
    );
    process.kill(tc.workerPid("w1"), "SIGKILL");
    await first;
    const second = publishCopy(1);
    // Frozen for three failure timeouts: its shards move, and its in-flight commits are fenced.
    stopped = tc.workerPid("w2");
    process.kill(stopped, "SIGSTOP");
    await new Promise((r) => setTimeout(r, 2_700));
    process.kill(stopped, "SIGCONT");
    stopped = undefined;
    await second;

    const checkpoints = await waitUntil("every record committed or counted", 90_000, async () => {
      const cps = await tc!.sink.checkpoints();
      const dups = cps.reduce((n, c) => n + Number(c.state?.[DUPLICATES_STATE_KEY] ?? 0), 0);
      const rows = await tc!.sink.rowCount("orders");
      return rows + dups >= 2 * ORDERS ? { rows, dups } : undefined;
    });
    const rows = await tc.sink.rows("orders", { values: true });
    const perOrder = new Map<string, number>();
    for (const r of rows) {
      const id = String(r.value?.order_id);
      perOrder.set(id, (perOrder.get(id) ?? 0) + 1);
    }
    expect(perOrder.size).toBe(ORDERS);
    expect([...perOrder.values()].every((n) => n === 1)).toBe(true);
    expect(checkpoints).toEqual({ rows: ORDERS, dups: ORDERS });
    const s = await tc.status();
    expect(s.shards.reduce((n, r) => n + r.duplicates, 0)).toBe(ORDERS);
    // And in the audit rows of the batches that dropped them, beside the rows they wrote.
    const batches = (await tc.sink.batches?.("orders")) ?? [];
    expect(batches.reduce((n, b) => n + b.deduplicated, 0)).toBe(ORDERS);
    expect(batches.reduce((n, b) => n + b.rows, 0)).toBe(ORDERS);
  }, 240_000);
});
