/**
 * Command-line options shared by the worker, coordinator and sink processes. Each flag has a
 * `SLUICE_*` environment variable (a flag wins over it), so an image runs every role from its
 * environment alone.
 */
import { readFileSync } from "node:fs";
import { Command, Option } from "commander";
import { loadConfigFile } from "../shared/adapters/config-file.js";
import type { TlsFiles } from "../shared/adapters/nats/connection.js";
import type { SluiceConfig } from "../shared/contract/config.js";
import { ErrorCode, SluiceError } from "../shared/contract/errors.js";
import { inboxPrefixOf, type Role, type RoleCredentials } from "../shared/contract/permissions.js";

export interface NodeOptions {
  id: string;
  servers: string[];
  config: SluiceConfig;
  sink: string;
  capacity: number;
  /** Port of the node's HTTP endpoint (metrics, health, the dashboard); 0 = none. */
  httpPort: number;
  /** Address the HTTP endpoint binds to. */
  httpBind: string;
  /** The role's NATS credentials; none on an open cluster. */
  auth?: RoleCredentials;
  /** TLS files, when the servers serve TLS (`tls://` URLs). */
  tls?: TlsFiles;
}

/** TLS files from options: a CA, and a client certificate and key if the servers verify clients. */
export function tlsFrom(o: { tlsCa?: string; tlsCert?: string; tlsKey?: string }): TlsFiles | undefined {
  if (o.tlsCa === undefined) {
    if (o.tlsCert !== undefined || o.tlsKey !== undefined)
      throw new SluiceError(ErrorCode.InvalidConfig, "--tls-cert and --tls-key need --tls-ca");
    return undefined;
  }
  if ((o.tlsCert === undefined) !== (o.tlsKey === undefined))
    throw new SluiceError(ErrorCode.InvalidConfig, "--tls-cert and --tls-key go together");
  return { caFile: o.tlsCa, certFile: o.tlsCert, keyFile: o.tlsKey };
}

/**
 * The role's credentials: a credentials file (`{"user", "password", "inboxPrefix"}`, as
 * `sluice up` writes them), or a user with a password from a file or the environment.
 */
export function credentialsFrom(
  role: Role,
  o: { credentials?: string; user?: string; passwordFile?: string; password?: string; inboxPrefix?: string },
): RoleCredentials | undefined {
  if (o.credentials !== undefined) {
    const c = JSON.parse(readFileSync(o.credentials, "utf8")) as Partial<RoleCredentials>;
    if (typeof c.user !== "string" || typeof c.password !== "string")
      throw new SluiceError(ErrorCode.InvalidConfig, `${o.credentials}: needs "user" and "password"`);
    return {
      user: c.user,
      password: c.password,
      inboxPrefix: o.inboxPrefix ?? c.inboxPrefix ?? inboxPrefixOf(role),
    };
  }
  if (o.user === undefined) return undefined;
  const password = o.passwordFile !== undefined ? readFileSync(o.passwordFile, "utf8").trim() : o.password;
  if (password === undefined)
    throw new SluiceError(
      ErrorCode.InvalidConfig,
      `user ${o.user}: no password (--password-file, SLUICE_PASSWORD_FILE or SLUICE_PASSWORD)`,
    );
  return { user: o.user, password, inboxPrefix: o.inboxPrefix ?? inboxPrefixOf(role) };
}

export function parseNodeOptions(role: "worker" | "coordinator" | "sink", argv: string[]): NodeOptions {
  const opt = (flags: string, description: string, env: string, fallback?: string): Option => {
    const o = new Option(flags, description).env(env);
    return fallback === undefined ? o : o.default(fallback);
  };
  const cmd = new Command(`sluice-${role}`)
    .addOption(opt("--id <id>", "node id, unique in the cluster", "SLUICE_NODE_ID").makeOptionMandatory())
    .addOption(opt("--servers <urls>", "comma-separated NATS URLs", "SLUICE_SERVERS").makeOptionMandatory())
    .addOption(opt("--config <file>", "cluster config (YAML or JSON); defaults when absent", "SLUICE_CONFIG"))
    .addOption(opt("--sink <file>", "SQLite sink file", "SLUICE_SINK_FILE", "sink.db"))
    .addOption(opt("--capacity <n>", "relative shard capacity of a worker", "SLUICE_CAPACITY", "1"))
    .addOption(
      opt(
        "--http-port <port>",
        "HTTP endpoint (/healthz, /readyz, /metrics; the dashboard on coordinators)",
        "SLUICE_HTTP_PORT",
        "0",
      ),
    )
    .addOption(
      opt("--http-bind <address>", "address the HTTP endpoint binds to", "SLUICE_HTTP_BIND", "127.0.0.1"),
    )
    .addOption(opt("--credentials <file>", "the role's credentials file", "SLUICE_CREDENTIALS"))
    .addOption(opt("--tls-ca <file>", "CA certificate (PEM) of the servers' TLS", "SLUICE_TLS_CA"))
    .addOption(
      opt("--tls-cert <file>", "client certificate (PEM), if the servers verify clients", "SLUICE_TLS_CERT"),
    )
    .addOption(opt("--tls-key <file>", "the client certificate's key (PEM)", "SLUICE_TLS_KEY"))
    .addOption(opt("--user <user>", "NATS user", "SLUICE_USER"))
    .addOption(opt("--password-file <file>", "file holding the NATS user's password", "SLUICE_PASSWORD_FILE"))
    .addOption(
      opt(
        "--inbox-prefix <prefix>",
        "the role's inbox prefix (default _INBOX_<role>)",
        "SLUICE_INBOX_PREFIX",
      ),
    )
    .parse(argv);
  const o = cmd.opts<{
    id: string;
    servers: string;
    config?: string;
    sink: string;
    capacity: string;
    httpPort: string;
    httpBind: string;
    credentials?: string;
    user?: string;
    passwordFile?: string;
    inboxPrefix?: string;
    tlsCa?: string;
    tlsCert?: string;
    tlsKey?: string;
  }>();
  // A password on the command line would show in `ps`: only a file or the environment.
  const password = process.env.SLUICE_PASSWORD;
  const auth = credentialsFrom(role, { ...o, ...(password === undefined ? {} : { password }) });
  const tls = tlsFrom(o);
  return {
    id: o.id,
    servers: o.servers.split(",").filter(Boolean),
    config: loadConfigFile(o.config),
    sink: o.sink,
    capacity: Number(o.capacity) > 0 ? Number(o.capacity) : 1,
    httpPort: Number.isInteger(Number(o.httpPort)) && Number(o.httpPort) > 0 ? Number(o.httpPort) : 0,
    httpBind: o.httpBind,
    ...(auth ? { auth } : {}),
    ...(tls ? { tls } : {}),
  };
}

/**
 * Runs `stop` once on SIGTERM/SIGINT, then exits; a second signal exits at once. A stop that
 * outlasts `deadlineMs` (a drain that cannot reach NATS or the sink, whose commits then retry
 * forever) exits with status 1: told to stop, a node stops. The deadline covers a worker's
 * drain (30 s) and its connections' (5 s); a deployment's grace period must be longer.
 */
export function onShutdown(stop: () => Promise<void>, deadlineMs = 40_000): void {
  let stopping = false;
  const handler = (sig: NodeJS.Signals): void => {
    if (stopping) process.exit(130);
    stopping = true;
    setTimeout(() => {
      console.error(`sluice: still stopping after ${deadlineMs} ms (${sig}); exiting`);
      process.exit(1);
    }, deadlineMs).unref();
    void stop()
      .then(() => process.exit(0))
      .catch(() => process.exit(1));
  };
  process.on("SIGTERM", handler);
  process.on("SIGINT", handler);
}
