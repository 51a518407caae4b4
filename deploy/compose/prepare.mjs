#!/usr/bin/env node
/**
 * Writes everything deploy/compose/docker-compose.yml reads, into one secrets directory
 * (default deploy/compose/.secrets, gitignored), with the project's own code from dist/ (run
 * `npm run build` first):
 *   credentials/<role>.json (0600)  per-role NATS user, random password, inbox prefix
 *   credentials/jetstream.key       the key JetStream encrypts its store with
 *   tls/                            a private CA and n1..n3's certificates (makeTlsFiles)
 *   nats/nN.conf (0600)             TLS on clients, mutual TLS on routes, account SLUICE with
 *                                   one least-privilege user per role (natsAccountsBlock)
 *   postgres/password (0600)        the `sluice` database user's password
 *   config.json                     the cluster config, sink: postgres on 127.0.0.1
 *   prometheus.yml                  scrapes the coordinators and workers
 *   grafana/                        datasource and dashboard provisioning (profile `grafana`)
 *   compose.env                     ports and paths: docker-compose --env-file <dir>/compose.env
 * Existing secrets are kept (ensureClusterSecrets); configs are rewritten. Run as root, it hands
 * the directory to uid 10001, which every container of the stack runs as.
 *
 *   node deploy/compose/prepare.mjs [--dir D] [--port-base 34222] [--config F]
 * Ports, all on 127.0.0.1: NATS client B..B+2, routes B+2000.., monitoring B+4000..;
 * coordinators B+6001, B+6002; workers B+6003..B+6005; PostgreSQL B+6100; Prometheus B+6200;
 * Grafana B+6300 (34222: 34222-34224, 36222.., 38222.., 40223-40227, 40322, 40422, 40522).
 */
import { chmodSync, chownSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";

const here = dirname(new URL(import.meta.url).pathname);
const root = resolve(here, "../..");
const dist = (p) => import(join(root, "dist", p));
const { ensureClusterSecrets } = await dist("nodes/cli/cluster-secrets.js");
const { natsConfig } = await dist("nodes/cli/nats-nodes.js");
const { loadConfigFile } = await dist("shared/adapters/config-file.js");
const { parseConfig } = await dist("shared/contract/config.js");

const { values: o } = parseArgs({
  options: {
    dir: { type: "string", default: join(here, ".secrets") },
    "port-base": { type: "string", default: "34222" },
    config: { type: "string" },
  },
});
const dir = resolve(o.dir);
const base = Number(o["port-base"]);
if (!Number.isInteger(base) || base < 1024 || base + 6300 > 65535) throw new Error(`bad --port-base ${base}`);
const UID = 10001;
const NATS = ["n1", "n2", "n3"];
const ports = {
  coordinators: [base + 6001, base + 6002],
  workers: [base + 6003, base + 6004, base + 6005],
  postgres: base + 6100,
  prometheus: base + 6200,
  grafana: base + 6300,
};

const priv = (file, text) => {
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  writeFileSync(file, text, { mode: 0o600 });
  chmodSync(file, 0o600);
};
const pub = (file, text) => {
  mkdirSync(dirname(file), { recursive: true, mode: 0o755 });
  writeFileSync(file, text, { mode: 0o644 });
  chmodSync(file, 0o644);
};

mkdirSync(dir, { recursive: true, mode: 0o700 });
const security = ensureClusterSecrets(dir, NATS);
const pgPasswordFile = join(dir, "postgres", "password");
let pgPassword;
try {
  pgPassword = readFileSync(pgPasswordFile, "utf8").trim();
} catch {
  pgPassword = (await import("node:crypto")).randomBytes(24).toString("base64url");
  priv(pgPasswordFile, `${pgPassword}\n`);
}

// The config the nodes read: the given one (or one pipeline `demo` of 16 shards), committing
// to the stack's PostgreSQL, the password from the file mounted into each worker.
const given = o.config ? loadConfigFile(o.config) : parseConfig({ pipelines: [{ name: "demo", shards: 16 }] });
const prevSink = given.sink?.type === "postgres" ? given.sink : {};
const cfg = parseConfig({
  ...given,
  sink: {
    ...prevSink,
    type: "postgres",
    url: `postgres://sluice@127.0.0.1:${ports.postgres}/sluice`,
    passwordFile: "/run/secrets/pg-password",
    passwordEnv: undefined,
  },
});
pub(join(dir, "config.json"), `${JSON.stringify(cfg, null, 2)}\n`);

// NATS configs as the containers see them: store under the /data volume, certificates mounted
// at /secrets/tls. Passwords and the store key come from the files ensureClusterSecrets made.
const inContainer = { credentialsDir: security.credentialsDir, tlsDir: "/secrets/tls" };
for (const [i, id] of NATS.entries())
  priv(join(dir, "nats", `${id}.conf`), natsConfig("/data", i, NATS.length, base, cfg, inContainer));

const targets = (list) => JSON.stringify(list.map((p) => `127.0.0.1:${p}`));
pub(
  join(dir, "prometheus.yml"),
  `# Written by deploy/compose/prepare.mjs: the compose stack's sluice nodes.
global:
  scrape_interval: 5s
  evaluation_interval: 15s
scrape_configs:
  - job_name: sluice-coordinator
    static_configs:
      - targets: ${targets(ports.coordinators)}
        labels: { role: coordinator }
  - job_name: sluice-worker
    static_configs:
      - targets: ${targets(ports.workers)}
        labels: { role: worker }
`,
);

// Grafana (profile `grafana`): the Prometheus datasource with a fixed uid, and the dashboard with
// its DS_PROMETHEUS input bound to it (file provisioning does not resolve __inputs).
pub(
  join(dir, "grafana", "datasources", "prometheus.yml"),
  `apiVersion: 1
datasources:
  - name: Prometheus
    uid: prometheus
    type: prometheus
    access: proxy
    url: http://127.0.0.1:${ports.prometheus}
    isDefault: true
`,
);
pub(
  join(dir, "grafana", "dashboards", "provider.yml"),
  `apiVersion: 1
providers:
  - name: sluice
    type: file
    options:
      path: /etc/grafana/provisioning/dashboards
`,
);
const dashboard = readFileSync(join(root, "deploy", "grafana", "sluice-dashboard.json"), "utf8");
pub(join(dir, "grafana", "dashboards", "sluice-dashboard.json"), dashboard.replaceAll("${DS_PROMETHEUS}", "prometheus"));

const natsUrls = NATS.map((_, i) => `tls://127.0.0.1:${base + i}`).join(",");
const env = {
  SLUICE_SECRETS: dir,
  SLUICE_UID: String(UID),
  SLUICE_NATS_URLS: natsUrls,
  SLUICE_C1_HTTP_PORT: ports.coordinators[0],
  SLUICE_C2_HTTP_PORT: ports.coordinators[1],
  SLUICE_W1_HTTP_PORT: ports.workers[0],
  SLUICE_W2_HTTP_PORT: ports.workers[1],
  SLUICE_W3_HTTP_PORT: ports.workers[2],
  SLUICE_POSTGRES_PORT: ports.postgres,
  SLUICE_PROMETHEUS_PORT: ports.prometheus,
  SLUICE_GRAFANA_PORT: ports.grafana,
};
pub(
  join(dir, "compose.env"),
  `${Object.entries(env)
    .map(([k, v]) => `${k}=${v}`)
    .join("\n")}\n`,
);

// Every container runs as uid 10001: as root, hand it the directory (keys stay 0600).
if (process.getuid?.() === 0) {
  const own = (p) => {
    chownSync(p, UID, UID);
    if (statSync(p).isDirectory()) for (const e of readdirSync(p)) own(join(p, e));
  };
  own(dir);
} else if (process.getuid?.() !== UID) {
  console.error(`note: the containers run as uid ${UID}; they must be able to read ${dir} (chown -R ${UID} it)`);
}
console.log(`prepared ${dir} (ports from ${base}); docker-compose --env-file ${join(dir, "compose.env")} up -d`);
