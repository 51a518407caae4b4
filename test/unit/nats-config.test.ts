/** The NATS server config `sluice up` writes: plain with `--insecure`, secured by default. */
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { credentialsFile, ensureClusterSecrets, jetstreamKeyFile } from "../../nodes/cli/cluster-secrets.js";
import { natsConfig } from "../../nodes/cli/nats-nodes.js";
import { parseConfig } from "../../shared/contract/config.js";
import { Roles } from "../../shared/contract/permissions.js";

describe("natsConfig", () => {
  const dir = mkdtempSync(join(tmpdir(), "sluice-natsconf-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const cfg = parseConfig({ pipelines: [{ name: "p", shards: 4, streams: "per-shard" }] });

  it("insecure: no TLS, no users, no cipher; the mappings in the global account", () => {
    const text = natsConfig(dir, 0, 3, 30000, cfg);
    expect(text).not.toMatch(/tls \{|cipher|accounts/);
    expect(text).toContain('"ingest.p.*": "sluice.in.p.{{partition(4,1)}}.{{wildcard(1)}}"');
  });

  it("secured: client TLS, mutual TLS on routes, users per role with the mappings, an encrypted store", () => {
    const s = ensureClusterSecrets(dir, ["n1", "n2", "n3"]);
    const text = natsConfig(dir, 1, 3, 30000, cfg, s);
    const [client, route] = text.split("cluster {");
    expect(client).toMatch(/tls \{[^}]*cert_file: ".*n2\.pem"[^}]*key_file: ".*n2-key\.pem"[^}]*ca_file/);
    expect(route).toMatch(/tls \{[^}]*verify: true/);
    expect(route).toContain("nats-route://127.0.0.1:32000");
    expect(text).toContain("cipher: aes");
    expect(text).toContain(`key: "${readFileSync(jetstreamKeyFile(s), "utf8").trim()}"`);
    expect(text).toMatch(/accounts \{\s*SLUICE \{\s*jetstream: enabled/);
    for (const r of Roles) {
      const { password } = JSON.parse(readFileSync(credentialsFile(s, r), "utf8")) as { password: string };
      expect(password.length).toBeGreaterThanOrEqual(40);
      expect(text).toContain(`{ user: "${r}", password: "${password}"`);
    }
    // The mapping moves into the account: outside it, it would map the global account only.
    const accounts = text.slice(text.indexOf("accounts {"));
    expect(accounts).toContain('"ingest.p.*": "sluice.in.p.{{partition(4,1)}}.{{wildcard(1)}}"');
  });

  it("keeps existing secrets: restarting a cluster keeps its passwords, CA and store key", () => {
    const s = ensureClusterSecrets(dir, ["n1", "n2", "n3"]);
    const before = [credentialsFile(s, "worker"), jetstreamKeyFile(s), join(s.tlsDir, "ca.pem")].map((f) =>
      readFileSync(f, "utf8"),
    );
    ensureClusterSecrets(dir, ["n1", "n2", "n3"]);
    const after = [credentialsFile(s, "worker"), jetstreamKeyFile(s), join(s.tlsDir, "ca.pem")].map((f) =>
      readFileSync(f, "utf8"),
    );
    expect(after).toEqual(before);
    expect(statSync(credentialsFile(s, "admin")).mode & 0o777).toBe(0o600);
  });
});
