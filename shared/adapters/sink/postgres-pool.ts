/**
 * A `pg` pool for a `postgres` sink config. The password comes from the config's environment
 * variable or file when it names one (else from the URL, if any): it is handed to `pg` and
 * never appears in a log, a status view or an error (`redactUrl`).
 */
import { readFileSync } from "node:fs";
import pg from "pg";
import { redactUrl, type SinkConfig } from "../../contract/config.js";
import { ErrorCode, SluiceError } from "../../contract/errors.js";

export type PostgresSinkConfig = Extract<SinkConfig, { type: "postgres" }>;

/** The password the config names (environment variable or file), or undefined. */
export function postgresPassword(
  c: PostgresSinkConfig,
  env: NodeJS.ProcessEnv = process.env,
): string | undefined {
  if (c.passwordEnv) {
    const v = env[c.passwordEnv];
    if (v === undefined)
      throw new SluiceError(
        ErrorCode.InvalidConfig,
        `postgres sink ${redactUrl(c.url)}: environment variable ${c.passwordEnv} is not set`,
      );
    return v;
  }
  if (c.passwordFile) {
    try {
      return readFileSync(c.passwordFile, "utf8").split(/\r?\n/)[0] ?? "";
    } catch (cause) {
      throw new SluiceError(
        ErrorCode.InvalidConfig,
        `postgres sink ${redactUrl(c.url)}: cannot read password file ${c.passwordFile}`,
        { cause },
      );
    }
  }
  return undefined;
}

/**
 * The URL with `password` in it, for `pg` only: `pg` takes every field of a connection string
 * over the same field given beside it, so a URL without a password would drop the one given.
 */
function withPassword(url: string, password: string): string {
  const u = new URL(url);
  u.password = encodeURIComponent(password);
  return u.toString();
}

export function postgresPool(c: PostgresSinkConfig, opts: { max?: number; name?: string } = {}): pg.Pool {
  const password = postgresPassword(c);
  const pool = new pg.Pool({
    connectionString: password === undefined ? c.url : withPassword(c.url, password),
    max: opts.max ?? c.poolSize,
    connectionTimeoutMillis: 5_000,
    idleTimeoutMillis: 30_000,
    ...(opts.name ? { application_name: opts.name } : {}),
  });
  // A pooled connection that breaks while idle (a restarted or killed server) emits here; the
  // next checkout gets a fresh one. Without a listener it would crash the process.
  pool.on("error", () => undefined);
  return pool;
}
