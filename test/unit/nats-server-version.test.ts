/**
 * The server floor: versions compare numerically, a node refuses a server below the floor at
 * connect (a fake server that only speaks INFO/PING), a server nobody listens on fails the first
 * connection with a message naming it, and `sluice up` refuses an old binary.
 */
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { checkedNatsServer } from "../../nodes/cli/nats-binary.js";
import { connectNats } from "../../shared/adapters/nats/connection.js";
import { ErrorCode, isSluiceError } from "../../shared/contract/errors.js";
import { atLeastVersion, NATS_SERVER_FLOOR, parseVersion } from "../../shared/contract/nats-server.js";

describe("nats-server versions", () => {
  it("compares versions numerically, not as text", () => {
    expect(parseVersion("v2.15.1")).toEqual([2, 15, 1]);
    expect(parseVersion("2.12.0-RC.3")).toEqual([2, 12, 0]);
    expect(parseVersion("nonsense")).toBeNull();
    expect(atLeastVersion("2.15.1", "2.14.0")).toBe(true);
    expect(atLeastVersion("2.14.0", "2.14.0")).toBe(true);
    expect(atLeastVersion("2.9.10", "2.14.0")).toBe(false);
    expect(atLeastVersion("2.10.27", "2.14.0")).toBe(false);
    expect(atLeastVersion("3.0.0", "2.14.0")).toBe(true);
    expect(atLeastVersion("unknown")).toBe(false);
  });

  describe("a node connecting to a server below the floor", () => {
    let server: Server | undefined;
    afterAll(() => server?.close());

    it("is refused with UNSUPPORTED_SERVER, naming the floor and how to install a current one", async () => {
      // Speaks just enough of the NATS protocol for a client to connect: INFO, then PONG to PING.
      server = createServer((sock) => {
        sock.write(
          `INFO ${JSON.stringify({ server_id: "OLD", server_name: "old", version: "2.9.10", proto: 1, headers: true, max_payload: 1048576 })}\r\n`,
        );
        sock.on("data", (d) => {
          if (d.toString().includes("PING")) sock.write("PONG\r\n");
        });
        sock.on("error", () => undefined);
      });
      await new Promise<void>((r) => server!.listen(0, "127.0.0.1", () => r()));
      const port = (server.address() as { port: number }).port;
      const err = await connectNats({ servers: [`nats://127.0.0.1:${port}`], name: "old-server-test" }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(isSluiceError(err, ErrorCode.UnsupportedServer)).toBe(true);
      expect((err as Error).message).toContain("2.9.10");
      expect((err as Error).message).toContain(`v${NATS_SERVER_FLOOR}`);
      expect((err as Error).message).toContain("install-nats-server.sh");
    });
  });

  it("a server nobody listens on fails the first connection with UNAVAILABLE, naming where", async () => {
    // A port just released: nothing listens on it, so the connection is refused at once.
    const probe = createServer();
    await new Promise<void>((r) => probe.listen(0, "127.0.0.1", () => r()));
    const port = (probe.address() as { port: number }).port;
    await new Promise<void>((r) => probe.close(() => r()));
    const url = `nats://127.0.0.1:${port}`;
    const err = await connectNats({ servers: [url], name: "no-server-test" }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(isSluiceError(err, ErrorCode.Unavailable)).toBe(true);
    expect((err as Error).message).toContain(url);
    expect((err as Error).message).toMatch(/refused/i);
  });

  it("sluice up refuses a nats-server binary below the floor", () => {
    const dir = mkdtempSync(join(tmpdir(), "sluice-old-nats-"));
    const fake = join(dir, "nats-server");
    writeFileSync(fake, '#!/bin/sh\necho "nats-server: v2.9.10"\n');
    chmodSync(fake, 0o755);
    const before = process.env.SLUICE_NATS_SERVER;
    process.env.SLUICE_NATS_SERVER = fake;
    try {
      let err: unknown = null;
      try {
        checkedNatsServer();
      } catch (e) {
        err = e;
      }
      expect(isSluiceError(err, ErrorCode.UnsupportedServer)).toBe(true);
      expect((err as Error).message).toMatch(/v2\.9\.10, older than v\d+\.\d+\.\d+/);
    } finally {
      if (before === undefined) delete process.env.SLUICE_NATS_SERVER;
      else process.env.SLUICE_NATS_SERVER = before;
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
