/**
 * The secured local cluster `sluice up` starts by default (README "Security"): TLS with a
 * private CA, a user per role, the store encrypted at rest; the CLI commands each connect as
 * their role; secrets stay out of logs, status, the dashboard and error messages.
 */
import { execFile } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { type ConnectionOptions, connect } from "@nats-io/transport-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { cliScript, readClusterFile } from "../../nodes/cli/cluster-file.js";
import { caFile, credentialsFile, jetstreamKeyFile } from "../../nodes/cli/cluster-secrets.js";
import { Roles } from "../../shared/contract/permissions.js";
import { SinkSubjects } from "../../shared/contract/wire.js";
import { startTestCluster, type TestCluster } from "./harness.js";

const run = promisify(execFile);

/** Every file under `dir`, recursively. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? filesUnder(join(dir, e.name)) : [join(dir, e.name)],
  );
}

describe("secured local cluster (TLS, users per role, encrypted store)", () => {
  let tc: TestCluster;
  let secrets: string[];
  const cli = (...args: string[]) =>
    run(process.execPath, [cliScript, ...args], { timeout: 60_000 }).then(
      (r) => ({ ...r, code: 0 }),
      (e: { stdout: string; stderr: string; code: number }) => e,
    );

  beforeAll(async () => {
    tc = await startTestCluster({ workers: 2, coordinators: 1, secured: true });
    const sec = tc.file().security!;
    secrets = [
      ...Roles.map(
        (r) => (JSON.parse(readFileSync(credentialsFile(sec, r), "utf8")) as { password: string }).password,
      ),
      readFileSync(jetstreamKeyFile(sec), "utf8").trim(),
    ];
  }, 120_000);
  afterAll(async () => {
    await tc?.stop();
  });

  it("lists TLS URLs, keeps credentials owner-only, and serves clients by role", async () => {
    const c = readClusterFile(tc.dir);
    const sec = c.security!;
    expect(c.nats.every((n) => n.url.startsWith("tls://"))).toBe(true);
    expect(statSync(sec.credentialsDir).mode & 0o777).toBe(0o700);
    for (const r of Roles) {
      expect(statSync(credentialsFile(sec, r)).mode & 0o777).toBe(0o600);
      expect(JSON.parse(readFileSync(credentialsFile(sec, r), "utf8"))).toMatchObject({
        user: r,
        inboxPrefix: `_INBOX_${r}`,
      });
    }
    expect(statSync(jetstreamKeyFile(sec)).mode & 0o777).toBe(0o600);
    expect(statSync(c.config).mode & 0o777).toBe(0o600);

    // The CLI's own connections: load as the producer, verify and status as the reader.
    const ackLog = join(tc.dir, "cli-acks.jsonl");
    const load = await cli("load", "--dir", tc.dir, "--count", "500", "--ack-log", ackLog);
    expect(load.code, load.stderr).toBe(0);
    await tc.waitCommitted(500);
    const verify = await cli("verify", "--dir", tc.dir, "--ack-log", ackLog, "--json");
    expect(verify.code, verify.stderr).toBe(0);
    expect(JSON.parse(verify.stdout)).toMatchObject({ ok: true, lost: 0, duplicated: 0 });
    const status = await cli("status", "--dir", tc.dir, "--json");
    expect(status.code, status.stderr).toBe(0);
    const schema = await cli("schema", "list", "--dir", tc.dir);
    expect(schema.code, schema.stderr).toBe(0);

    // Refused: no credentials; a server certificate the client cannot check; a producer
    // fencing the sink.
    const url = c.nats[0]!.url;
    // "connected", or why the connection was refused.
    const attempt = (opts: Omit<ConnectionOptions, "servers" | "timeout" | "reconnect">) =>
      connect({ servers: [url], timeout: 3_000, reconnect: false, ...opts }).then(
        (nc) => nc.close().then(() => "connected"),
        (e: Error) => e.message,
      );
    expect(await attempt({ tls: { caFile: caFile(sec) } })).not.toBe("connected");
    const producer = JSON.parse(readFileSync(credentialsFile(sec, "producer"), "utf8")) as {
      user: string;
      password: string;
      inboxPrefix: string;
    };
    expect(await attempt({ user: producer.user, pass: producer.password })).not.toBe("connected");
    const nc = await connect({
      servers: [url],
      user: producer.user,
      pass: producer.password,
      inboxPrefix: producer.inboxPrefix,
      tls: { caFile: caFile(sec) },
    });
    try {
      const denied = await nc.request(SinkSubjects.fence, "{}", { timeout: 2_000 }).then(
        () => "answered",
        (e: Error) => e.message,
      );
      expect(denied).not.toBe("answered");
    } finally {
      await nc.close();
    }

    // Every node and CLI command stayed inside its permissions.
    const serverLogs = c.nats
      .map((n) => readFileSync(join(tc.dir, "logs", `${n.id}.log`), "utf8"))
      .join("\n");
    const violations = serverLogs
      .split("\n")
      .filter(
        (l) =>
          l.includes("Violation") &&
          !l.includes(`user:${producer.user}" - Publish Violation - Subject "${SinkSubjects.fence}`),
      );
    expect(violations).toEqual([]);
  }, 120_000);

  it("keeps records encrypted at rest", async () => {
    // A record id is in every stored message's headers: none may be readable in the store.
    const ackLog = join(tc.dir, "cli-acks.jsonl");
    const id = (JSON.parse(readFileSync(ackLog, "utf8").split("\n")[0]!) as { id: string }).id;
    const c = readClusterFile(tc.dir);
    const stored = c.nats.flatMap((n) => filesUnder(join(tc.dir, "nats", n.id)));
    expect(stored.length).toBeGreaterThan(0);
    const plain = stored.filter((f) => readFileSync(f).includes(id));
    expect(plain).toEqual([]);
  });

  it("keeps passwords and the store's key out of logs, status, the dashboard and error messages", async () => {
    const c = readClusterFile(tc.dir);
    const seen: Array<[string, string]> = [];
    for (const f of readdirSync(join(tc.dir, "logs")))
      seen.push([`log ${f}`, readFileSync(join(tc.dir, "logs", f), "utf8")]);
    seen.push(["cluster.json", readFileSync(join(tc.dir, "cluster.json"), "utf8")]);
    const status = await cli("status", "--dir", tc.dir, "--json");
    seen.push(["status --json", status.stdout + status.stderr]);
    const coordinator = c.coordinators[0]!.http!;
    seen.push(["/api/state", await (await fetch(`${coordinator}/api/state`)).text()]);
    seen.push(["/metrics", await (await fetch(`${coordinator}/metrics`)).text()]);
    seen.push(["dashboard", await (await fetch(`${coordinator}/`)).text()]);
    // Error messages: the same cluster seen through a config whose PostgreSQL URL carries a
    // password and reaches no server; status and verify fail, naming the server, not the password.
    const pgUrl = "postgres://sluice:pg-secret-in-url@127.0.0.1:1/none";
    const pgDir = join(tc.dir, "pg-refused");
    mkdirSync(pgDir);
    const cfg = JSON.parse(readFileSync(c.config, "utf8")) as Record<string, unknown>;
    writeFileSync(
      join(pgDir, "config.json"),
      JSON.stringify({ ...cfg, sink: { type: "postgres", url: pgUrl } }),
    );
    writeFileSync(
      join(pgDir, "cluster.json"),
      JSON.stringify({
        ...c,
        dir: pgDir,
        config: join(pgDir, "config.json"),
        sink: { type: "postgres", url: pgUrl },
      }),
    );
    for (const args of [
      ["status", "--json"],
      ["verify", "--ack-log", join(tc.dir, "cli-acks.jsonl")],
    ]) {
      const r = await cli(args[0]!, "--dir", pgDir, ...args.slice(1));
      // Status reports the sink as unreachable; verify cannot read it and fails.
      if (args[0] === "verify") expect(r.code).not.toBe(0);
      seen.push([`${args[0]} with an unreachable PostgreSQL`, r.stdout + r.stderr]);
    }
    for (const [where, text] of seen) {
      for (const s of [...secrets, "pg-secret-in-url"])
        expect(text.includes(s), `${where} holds a secret`).toBe(false);
    }
  }, 120_000);
});
