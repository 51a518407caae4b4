/**
 * Schema validation, quality rules and dead-letter replay end to end, on a real 3-node NATS
 * cluster whose config is the YAML file the README starts from: shards wait for their schema
 * subject; records are checked while a new version is registered and a worker is SIGKILLed
 * mid-run; every record ends committed exactly once or dead-lettered, never both; and replaying
 * the schema violations after the fix commits each of them once, however often it runs.
 */
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { headers as natsHeaders } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitUntil } from "../../nodes/cli/wait.js";
import { loadConfigFile } from "../../shared/adapters/config-file.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import { ErrorCode } from "../../shared/contract/errors.js";
import { deadLetterStream, Headers, ingestSubject } from "../../shared/contract/wire.js";
import { startTestCluster, type TestCluster, waitSettled } from "./harness.js";

const run = promisify(execFile);
const MAIN = join(import.meta.dirname, "../../dist/nodes/cli/main.js");
const files = mkdtempSync(join(tmpdir(), "sluice-validation-"));

/** The README's config, as it is, plus the rules and the tests' faster timing. */
const CONFIG = `pipelines:
  - name: orders
    shards: 8
    schema:
      subject: orders          # records are checked against this subject's schema
    rules:
      - { name: qty_positive, range: { field: qty, min: 0 } }
      - { name: has_note, notNull: note, mode: shadow }
timing: { heartbeatMs: 150, failureTimeoutMs: 900, leaseTtlMs: 900, leaderTtlMs: 1200 }
worker: { batchMax: 256, pullWaitMs: 50 }
`;

const V1 = {
  type: "object",
  properties: {
    id: { type: "string" },
    amount: { type: "number" },
    qty: { type: "integer" },
    note: { type: "string" },
  },
  required: ["id", "amount", "qty"],
};
/** Also accepts an amount written as text, and fills a currency. */
const V2 = {
  ...V1,
  properties: {
    ...V1.properties,
    amount: { type: ["number", "string"] },
    currency: { type: "string", default: "EUR" },
  },
};

type Kind = "valid" | "text-amount" | "negative";
const kindOf = (i: number): Kind => (i % 10 === 3 ? "text-amount" : i % 10 === 7 ? "negative" : "valid");
const N = 3_000;

let tc: TestCluster | undefined;
beforeAll(async () => {
  const file = join(files, "orders.yaml");
  writeFileSync(file, CONFIG);
  tc = await startTestCluster({ workers: 3, coordinators: 2, config: loadConfigFile(file) });
  await waitSettled(tc);
}, 120_000);
afterAll(async () => {
  await tc?.stop();
  rmSync(files, { recursive: true, force: true });
});

async function sluice(...args: string[]): Promise<string> {
  const r = await run(process.execPath, [MAIN, ...args, "--dir", tc!.dir], { timeout: 60_000 });
  return r.stdout;
}

/** Publishes records `from` to `to`, 64 at a time, one group every `pauseMs`. */
async function publish(from: number, to: number, pauseMs = 0): Promise<void> {
  const js = jetstream(tc!.nc, { timeout: 10_000 });
  const pending: Promise<unknown>[] = [];
  for (let i = from; i < to; i++) {
    const kind = kindOf(i);
    const h = natsHeaders();
    h.set(Headers.msgId, `o-${i}`);
    const value = {
      id: `o-${i}`,
      amount: kind === "text-amount" ? String(i) : i,
      qty: kind === "negative" ? -1 : i % 5,
      ...(i % 2 === 0 ? { note: "n" } : {}),
    };
    pending.push(js.publish(ingestSubject("orders", `c${i % 97}`), encodeRecord(value), { headers: h }));
    if (pending.length >= 64) {
      await Promise.all(pending.splice(0));
      if (pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
    }
  }
  await Promise.all(pending);
}

/** Record id -> how often it is committed. */
async function committed(): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const r of await tc!.sink.rows("orders")) out.set(r.recordId, (out.get(r.recordId) ?? 0) + 1);
  return out;
}

/** Record id -> the codes it was dead-lettered with, from the dead-letter stream. */
async function deadLetters(): Promise<Map<string, string[]>> {
  const jsm = await jetstreamManager(tc!.nc);
  const stream = deadLetterStream("orders");
  const n = (await jsm.streams.info(stream)).state.last_seq;
  const out = new Map<string, string[]>();
  for (let seq = 1; seq <= n; seq++) {
    const m = await jsm.streams.getMessage(stream, { seq }).catch(() => null);
    const id = m?.header.get(Headers.originalMsgId);
    if (!m || !id) continue;
    out.set(id, [...(out.get(id) ?? []), m.header.get(Headers.errorCode)]);
  }
  return out;
}

describe("schema validation, quality rules and replay (real 3-node NATS cluster)", () => {
  it("holds shards while their subject is missing, then commits or dead-letters every record once through a SIGKILL", async () => {
    await publish(0, 200);
    // No subject yet: the shards wait and say so; nothing is committed or dead-lettered.
    const waiting = await waitUntil("shards waiting for the subject", 20_000, async () => {
      const s = await tc!.status();
      return Object.keys(s.stages.waiting).length > 0 ? s.stages.waiting : undefined;
    });
    expect(Object.values(waiting)[0]!.reason).toContain('schema subject "orders" is not registered');
    expect(await tc!.sink.rowCount("orders")).toBe(0);

    expect(
      await sluice("schema", "register", "--subject", "orders", "--file", writeSchema("v1.json", V1)),
    ).toContain("version 1");
    // About 300 records a second: the SIGKILL and the new version land mid-run.
    const load = publish(200, N, 200);
    await waitUntil("a third committed", 60_000, async () =>
      (await tc!.sink.rowCount("orders")) >= N / 3 ? true : undefined,
    );
    process.kill(tc!.workerPid("w1"), "SIGKILL");
    // A compatible version mid-run: text amounts pass from the moment a shard pins it.
    await sluice("schema", "register", "--subject", "orders", "--file", writeSchema("v2.json", V2));
    await load;
    await waitSettled(tc!, 30_000, ["w2", "w3"]);

    const done = await waitUntil("every record committed or dead-lettered", 90_000, async () => {
      const [c, d] = [await committed(), await deadLetters()];
      let settled = 0;
      for (let i = 0; i < N; i++) if (c.has(`o-${i}`) || d.has(`o-${i}`)) settled++;
      return settled === N ? { c, d } : undefined;
    });
    for (let i = 0; i < N; i++) {
      const id = `o-${i}`;
      const times = done.c.get(id) ?? 0;
      const codes = done.d.get(id) ?? [];
      expect(times, `${id} committed more than once`).toBeLessThanOrEqual(1);
      expect(times === 1 && codes.length > 0, `${id} both committed and dead-lettered`).toBe(false);
      if (kindOf(i) === "valid") expect(times, `${id} (valid) not committed`).toBe(1);
      if (kindOf(i) === "negative") expect(codes).toEqual([ErrorCode.RuleFailed]);
      if (kindOf(i) === "text-amount" && times === 0) expect(codes).toEqual([ErrorCode.SchemaViolation]);
    }
    // Text amounts published before version 2 was pinned were dead-lettered, with the reason.
    const violations = [...done.d.entries()].filter(([, codes]) => codes[0] === ErrorCode.SchemaViolation);
    expect(violations.length).toBeGreaterThan(0);
    // Records committed under version 2 carry its default.
    const rows = await tc!.sink.rows("orders", { values: true });
    expect(rows.some((r) => r.value?.currency === "EUR")).toBe(true);
    // The shadowed rule kept its records; both rules are counted on the live workers.
    const s = await tc!.status();
    expect(s.stages.rules["orders.qty_positive"]?.rejected).toBeGreaterThan(0);
    expect(s.stages.rules["orders.has_note"]?.shadowed).toBeGreaterThan(0);
    expect(Object.keys(s.stages.waiting)).toEqual([]);

    // The fix is registered (version 2): replaying the violations commits each once, also when
    // the replay runs twice.
    const before = await committed();
    await sluice("dlq", "replay", "--pipeline", "orders", "--code", ErrorCode.SchemaViolation);
    await sluice("dlq", "replay", "--pipeline", "orders", "--code", ErrorCode.SchemaViolation);
    const after = await waitUntil("the replayed violations committed", 60_000, async () => {
      const c = await committed();
      return violations.every(([id]) => c.has(id)) ? c : undefined;
    });
    // Settle: a duplicate would arrive right behind the first copy.
    await new Promise((r) => setTimeout(r, 2_000));
    const final = await committed();
    for (const [id] of violations) expect(final.get(id), `${id} after two replays`).toBe(1);
    expect(final.size).toBe(before.size + violations.length);
    expect([...after.values()].every((n) => n === 1)).toBe(true);
  }, 300_000);
});

function writeSchema(name: string, schema: object): string {
  const f = join(files, name);
  writeFileSync(f, JSON.stringify(schema));
  return f;
}
