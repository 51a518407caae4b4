/**
 * Any NATS client can ingest: records published with the raw NATS protocol over a socket (no
 * nats.js, no sluice code, no sluice header) to `ingest.demo.<key>` with a `Nats-Msg-Id` and a
 * JSON or CBOR map are each committed once, with their key, in per-key order.
 */
import { type Socket, connect as tcpConnect } from "node:net";
import { encode } from "cbor-x";
import { afterEach, describe, expect, it } from "vitest";
import { orderViolations } from "../../nodes/cli/verify.js";
import { waitUntil } from "../../nodes/cli/wait.js";
import { startTestCluster, type TestCluster, waitSettled } from "./harness.js";

/** A minimal NATS client: CONNECT, SUB, HPUB, and counting the PubAcks that come back. */
class RawNatsClient {
  private buf = "";
  acks = 0;
  errors: string[] = [];

  private constructor(private readonly sock: Socket) {
    sock.setEncoding("latin1");
    sock.on("data", (d: string) => this.read(d));
  }

  static async open(url: string): Promise<RawNatsClient> {
    const u = new URL(url);
    const sock = tcpConnect(Number(u.port), u.hostname);
    await new Promise<void>((resolve, reject) => {
      sock.once("connect", () => resolve());
      sock.once("error", reject);
    });
    const c = new RawNatsClient(sock);
    sock.write(
      `CONNECT ${JSON.stringify({ verbose: false, pedantic: false, headers: true, no_responders: true, name: "raw" })}\r\n`,
    );
    sock.write("SUB _RAW.acks.* 1\r\n");
    return c;
  }

  private read(d: string): void {
    this.buf += d;
    for (;;) {
      const eol = this.buf.indexOf("\r\n");
      if (eol < 0) return;
      const line = this.buf.slice(0, eol);
      if (line.startsWith("MSG ") || line.startsWith("HMSG ")) {
        const parts = line.split(" ");
        const total = Number(parts[parts.length - 1]);
        if (this.buf.length < eol + 2 + total + 2) return;
        const body = this.buf.slice(eol + 2, eol + 2 + total);
        this.buf = this.buf.slice(eol + 2 + total + 2);
        if (body.includes('"error"')) this.errors.push(body);
        else this.acks++;
        continue;
      }
      this.buf = this.buf.slice(eol + 2);
      if (line === "PING") this.sock.write("PONG\r\n");
      if (line.startsWith("-ERR")) this.errors.push(line);
    }
  }

  /** HPUB with a reply subject for the PubAck; the subject in UTF-8, the payload as raw bytes. */
  publish(subject: string, id: string, data: Uint8Array, contentType?: string): void {
    const hdr = Buffer.from(
      `NATS/1.0\r\nNats-Msg-Id: ${id}\r\n${contentType ? `Content-Type: ${contentType}\r\n` : ""}\r\n`,
      "utf8",
    );
    const line = Buffer.from(
      `HPUB ${subject} _RAW.acks.${id} ${hdr.length} ${hdr.length + data.length}\r\n`,
      "utf8",
    );
    this.sock.write(Buffer.concat([line, hdr, data, Buffer.from("\r\n")]));
  }

  close(): void {
    this.sock.end();
  }
}

describe("ingest from any NATS client (real 3-node NATS cluster)", () => {
  let tc: TestCluster | undefined;
  afterEach(async () => {
    await tc?.stop();
    tc = undefined;
  });

  it("commits raw-protocol publishes of JSON and CBOR maps once each, with their keys, in per-key order", async () => {
    tc = await startTestCluster({ workers: 2, coordinators: 1 });
    await waitSettled(tc);
    const client = await RawNatsClient.open(tc.file().nats[0]!.url);
    const count = 3_000;
    const keys = ["alice", "bob", "carol", "k-123", "x_9", "Zoë"];
    const sent = new Map<string, { key: string; n: number }>();
    try {
      for (let i = 0; i < count; i++) {
        const key = keys[i % keys.length]!;
        const id = `raw-${i}`;
        sent.set(id, { key, n: i });
        if (i % 2 === 0)
          client.publish(
            `ingest.demo.${key}`,
            id,
            new TextEncoder().encode(JSON.stringify({ n: i, key })),
            "application/json",
          );
        else client.publish(`ingest.demo.${key}`, id, encode({ n: i, key }));
        if (i % 200 === 0) await new Promise((r) => setTimeout(r, 5));
      }
      await waitUntil("every PubAck", 30_000, () =>
        client.acks + client.errors.length >= count ? true : undefined,
      );
      expect(client.errors).toEqual([]);
      expect(client.acks).toBe(count);
      await tc.waitCommitted(count);
      const rows = await tc.sink.rows("demo", { values: true });
      expect(rows).toHaveLength(count);
      expect(new Set(rows.map((r) => r.recordId)).size).toBe(count);
      for (const r of rows) {
        const s = sent.get(r.recordId)!;
        expect(r.key).toBe(s.key);
        expect(r.value).toEqual({ n: s.n, key: s.key });
      }
      expect(orderViolations(rows)).toBe(0);
      // Per key, the records were committed in the order they were published.
      for (const key of keys) {
        const ns = rows
          .filter((r) => r.key === key)
          .sort((a, b) => a.order - b.order)
          .map((r) => sent.get(r.recordId)!.n);
        expect(ns).toEqual([...ns].sort((a, b) => a - b));
      }
    } finally {
      client.close();
    }
  });
});
