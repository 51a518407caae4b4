/**
 * The NATS nodes of a local cluster: each server's config (client, route and monitor ports on
 * 127.0.0.1, JetStream store, the pipelines' partition mappings), started as a process or a
 * Docker container.
 */
import type { ChildProcess } from "node:child_process";
import { createHash } from "node:crypto";
import { chownSync, existsSync, mkdirSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import type { SluiceConfig } from "../../shared/contract/config.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import { natsAccountsBlock } from "../../shared/contract/permissions.js";
import { partitionMapping } from "../../shared/contract/wire.js";
import type { NatsRuntime } from "./cluster-file.js";
import { type ClusterSecurity, caFile, jetstreamKey, rolePasswords } from "./cluster-secrets.js";
import { checkedNatsServer } from "./nats-binary.js";
import { containerPid, startNatsContainer } from "./nats-containers.js";
import { spawnLogged } from "./node-processes.js";

export function natsConfig(
  dir: string,
  i: number,
  n: number,
  base: number,
  cfg: SluiceConfig,
  security?: ClusterSecurity,
): string {
  const id = `n${i + 1}`;
  const routes = Array.from({ length: n }, (_, k) => `"nats-route://127.0.0.1:${base + 2000 + k}"`).join(
    ", ",
  );
  // Only a pipeline with a stream per shard needs the account to partition its ingest
  // subjects; a shared stream does it itself (its subject transform).
  const mappings = cfg.pipelines
    .filter((p) => p.streams === "per-shard")
    .map((p) => partitionMapping(p.name, p.shards));
  // fsync before every PubAck: server-wide, so on when any pipeline asks for it.
  const sync = cfg.pipelines.some((p) => p.durability === "fsync") ? "\n  sync_interval: always" : "";
  // Secured: TLS on client connections (clients check the server against the CA), mutual TLS on
  // routes (a server joins only with a certificate from the CA), users per role in account
  // SLUICE (the mappings move there: top-level ones apply to the global account only), and the
  // store encrypted with AES-GCM under the cluster's key.
  const tls = security
    ? {
        client: `tls {\n  cert_file: "${join(security.tlsDir, `${id}.pem`)}"\n  key_file: "${join(security.tlsDir, `${id}-key.pem`)}"\n  ca_file: "${caFile(security)}"\n  timeout: 2\n}\n`,
        route: `  tls {\n    cert_file: "${join(security.tlsDir, `${id}.pem`)}"\n    key_file: "${join(security.tlsDir, `${id}-key.pem`)}"\n    ca_file: "${caFile(security)}"\n    verify: true\n    timeout: 2\n  }\n`,
        cipher: `\n  cipher: aes\n  key: "${jetstreamKey(security)}"`,
      }
    : { client: "", route: "", cipher: "" };
  const accounts = security
    ? natsAccountsBlock(cfg, rolePasswords(security), mappings)
    : `mappings = {\n${mappings.map(([from, to]) => `  "${from}": "${to}"`).join("\n")}\n}\n`;
  return `server_name: ${id}
listen: 127.0.0.1:${base + i}
http: 127.0.0.1:${base + 4000 + i}
max_payload: 1MB
${tls.client}jetstream {
  store_dir: "${join(dir, "nats", id)}"
  max_memory_store: 268435456
  max_file_store: 8589934592${sync}${tls.cipher}
}
cluster {
  name: sluice
  listen: 127.0.0.1:${base + 2000 + i}
${tls.route}  routes: [${routes}]
}
${accounts}`;
}

export async function waitMetaLeader(monitor: string, deadlineMs: number): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (Date.now() < end) {
    try {
      const jsz = (await (await fetch(`${monitor}/jsz`)).json()) as { meta_cluster?: { leader?: string } };
      if (jsz.meta_cluster?.leader) return;
    } catch {
      // not answering yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * When run as root, NATS node `nN` runs as uid/gid `61000 + N` (through setpriv), so a chaos
 * script can cut exactly one node's cluster traffic with iptables' owner match. Its store is
 * its own; to read its config and binary it keeps one capability, `dac_read_search` (read and
 * search any directory), so a cluster directory inside a private (0700) folder such as /root or
 * a `mktemp -d` works as well as an open one.
 */
export const natsUid = (id: string): number | null => {
  const n = Number(id.replace(/^n/, ""));
  return process.getuid?.() === 0 && existsSync("/usr/bin/setpriv") && Number.isInteger(n)
    ? 61_000 + n
    : null;
};

export async function startNatsNode(
  dir: string,
  conf: string,
  id: string,
  runtime: NatsRuntime,
  /** Files or folders outside the store the config names (TLS files), for a container's mounts. */
  readOnly: string[] = [],
): Promise<{ pid: number; container?: string }> {
  const log = join(dir, "logs", `${id}.log`);
  if (runtime === "container") {
    const uid = natsUid(id);
    const store = join(dir, "nats", id);
    mkdirSync(store, { recursive: true });
    if (uid !== null) chownTree(store, uid);
    const { containerId } = await startNatsContainer({
      name: `sluice-${createHash("sha1").update(dir).digest("hex").slice(0, 8)}-${id}`,
      configFile: conf,
      storeDir: store,
      logFile: log,
      ...(uid === null ? {} : { user: `${uid}:${uid}` }),
      readOnly,
    });
    return { pid: await containerPid(containerId), container: containerId };
  }
  const child = startNats(conf, log, id);
  if (child.pid === undefined) {
    throw new SluiceError(ErrorCode.ClusterFailure, `could not start ${checkedNatsServer().bin} for ${id}`);
  }
  return { pid: child.pid };
}

export function startNats(conf: string, log: string, id: string): ChildProcess {
  const { bin } = checkedNatsServer();
  const uid = natsUid(id);
  if (uid === null) return spawnLogged(bin, ["-c", conf], log);
  const store = join(dirname(conf), id);
  mkdirSync(store, { recursive: true });
  chownTree(store, uid);
  return spawnLogged(
    "setpriv",
    [
      `--reuid=${uid}`,
      `--regid=${uid}`,
      "--clear-groups",
      "--inh-caps=+dac_read_search",
      "--ambient-caps=+dac_read_search",
      bin,
      "-c",
      conf,
    ],
    log,
  );
}

function chownTree(path: string, uid: number): void {
  chownSync(path, uid, uid);
  for (const e of readdirSync(path, { withFileTypes: true })) {
    const p = join(path, e.name);
    if (e.isDirectory()) chownTree(p, uid);
    else chownSync(p, uid, uid);
  }
}
