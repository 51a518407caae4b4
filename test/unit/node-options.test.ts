import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { NodeHttpServer } from "../../nodes/node-http.js";
import { parseNodeOptions } from "../../nodes/node-options.js";

const argv = (...flags: string[]): string[] => ["node", "worker", ...flags];
const saved = { ...process.env };

afterEach(() => {
  for (const k of Object.keys(process.env))
    if (k.startsWith("SLUICE_") && !(k in saved)) delete process.env[k];
  Object.assign(process.env, saved);
});

describe("node options from flags and SLUICE_* variables", () => {
  it("takes every option from the environment, and a flag over its variable", () => {
    process.env.SLUICE_NODE_ID = "w-env";
    process.env.SLUICE_SERVERS = "nats://127.0.0.1:4222,nats://127.0.0.1:4223";
    process.env.SLUICE_HTTP_PORT = "9100";
    process.env.SLUICE_HTTP_BIND = "0.0.0.0";
    const fromEnv = parseNodeOptions("worker", argv());
    expect(fromEnv).toMatchObject({
      id: "w-env",
      servers: ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"],
      httpPort: 9100,
      httpBind: "0.0.0.0",
    });
    expect(fromEnv.auth).toBeUndefined();
    const flags = parseNodeOptions("worker", argv("--id", "w-flag", "--http-bind", "127.0.0.1"));
    expect(flags).toMatchObject({ id: "w-flag", httpBind: "127.0.0.1", servers: fromEnv.servers });
  });

  it("reads the role's credentials from a file, or a user with a password from the environment", () => {
    const dir = mkdtempSync(join(tmpdir(), "sluice-opts-"));
    try {
      const file = join(dir, "worker.json");
      writeFileSync(
        file,
        JSON.stringify({ user: "worker", password: "s3cret", inboxPrefix: "_INBOX_worker" }),
      );
      const o = parseNodeOptions(
        "worker",
        argv("--id", "w1", "--servers", "nats://127.0.0.1:1", "--credentials", file),
      );
      expect(o.auth).toEqual({ user: "worker", password: "s3cret", inboxPrefix: "_INBOX_worker" });
      process.env.SLUICE_USER = "coordinator";
      process.env.SLUICE_PASSWORD = "pw";
      const c = parseNodeOptions("coordinator", argv("--id", "c1", "--servers", "nats://127.0.0.1:1"));
      expect(c.auth).toEqual({ user: "coordinator", password: "pw", inboxPrefix: "_INBOX_coordinator" });
      delete process.env.SLUICE_PASSWORD;
      expect(() =>
        parseNodeOptions("coordinator", argv("--id", "c1", "--servers", "nats://127.0.0.1:1")),
      ).toThrow(/no password/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("TLS files from options", () => {
  it("takes a CA alone or with a client certificate and its key, and refuses half a pair", () => {
    const base = ["--id", "w1", "--servers", "tls://127.0.0.1:1"];
    expect(parseNodeOptions("worker", argv(...base, "--tls-ca", "/ca.pem")).tls).toEqual({
      caFile: "/ca.pem",
      certFile: undefined,
      keyFile: undefined,
    });
    process.env.SLUICE_TLS_CA = "/env-ca.pem";
    process.env.SLUICE_TLS_CERT = "/w.pem";
    process.env.SLUICE_TLS_KEY = "/w-key.pem";
    expect(parseNodeOptions("worker", argv(...base)).tls).toEqual({
      caFile: "/env-ca.pem",
      certFile: "/w.pem",
      keyFile: "/w-key.pem",
    });
    delete process.env.SLUICE_TLS_KEY;
    expect(() => parseNodeOptions("worker", argv(...base))).toThrow(/go together/);
    delete process.env.SLUICE_TLS_CA;
    delete process.env.SLUICE_TLS_CERT;
    expect(parseNodeOptions("worker", argv(...base)).tls).toBeUndefined();
  });
});

describe("a node's /healthz and /readyz", () => {
  it("is alive at once, and ready only when its check says so", async () => {
    let why: string | null = "no leader has answered a heartbeat yet";
    const http = new NodeHttpServer().readiness(() => why);
    const port = await http.start(0);
    try {
      const get = (path: string) => fetch(`http://127.0.0.1:${port}${path}`);
      expect((await get("/healthz")).status).toBe(200);
      const notReady = await get("/readyz");
      expect(notReady.status).toBe(503);
      expect(await notReady.text()).toContain("no leader has answered");
      why = null;
      expect((await get("/readyz")).status).toBe(200);
    } finally {
      await http.stop();
    }
  });
});
