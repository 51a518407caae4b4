/**
 * A private PostgreSQL server for a local cluster (`sluice up --sink postgres` without a URL)
 * and for tests: Debian's `postgresql` binaries, `initdb` under the cluster directory, its own
 * port on 127.0.0.1 and a Unix socket in its data directory (`url` names the socket, which the
 * cluster's workers then use: a round trip over it costs both sides less CPU than over
 * loopback TCP), stopped by `sluice down`. As root it runs as Debian's
 * `postgres` user (PostgreSQL refuses to run as root, and `initdb` needs a user that exists),
 * keeping one capability, `dac_read_search`, to reach a data directory inside a private (0700)
 * folder.
 */
import { execFileSync } from "node:child_process";
import { chownSync, existsSync, mkdirSync, readdirSync, realpathSync, writeFileSync } from "node:fs";
import { userInfo } from "node:os";
import { join, resolve } from "node:path";
import pg from "pg";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import { logTail, spawnLogged } from "./node-processes.js";

export const POSTGRES_USER = "sluice";
export const POSTGRES_DATABASE = "sluice";

/** The newest `/usr/lib/postgresql/<major>/bin` (Debian's layout), or null when none is installed. */
export function postgresBinDir(): string | null {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return null;
  const majors = readdirSync(root)
    .filter((v) => /^\d+$/.test(v) && existsSync(join(root, v, "bin", "postgres")))
    .sort((a, b) => Number(b) - Number(a));
  return majors[0] ? join(root, majors[0], "bin") : null;
}

/** Who the server runs as: Debian's `postgres` user when sluice runs as root, else nobody else. */
function runAs(): { uid: number; gid: number } | null {
  if (process.getuid?.() !== 0) return null;
  let uid: number;
  let gid: number;
  try {
    uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
    gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
  } catch {
    throw new SluiceError(
      ErrorCode.ClusterFailure,
      `running as ${userInfo().username}, PostgreSQL needs a user of its own: Debian's 'postgres' user (apt-get install postgresql) is missing`,
    );
  }
  if (!existsSync("/usr/bin/setpriv"))
    throw new SluiceError(
      ErrorCode.ClusterFailure,
      "running as root needs setpriv (util-linux) to start PostgreSQL",
    );
  return { uid, gid };
}

/** `cmd args…` as the server's uid when running as root (see the module comment). */
function asServerUser(cmd: string, args: string[]): [string, string[]] {
  const as = runAs();
  if (as === null) return [cmd, args];
  return [
    "setpriv",
    [
      `--reuid=${as.uid}`,
      `--regid=${as.gid}`,
      "--clear-groups",
      "--inh-caps=+dac_read_search",
      "--ambient-caps=+dac_read_search",
      cmd,
      ...args,
    ],
  ];
}

function chownTree(path: string, as: { uid: number; gid: number }): void {
  chownSync(path, as.uid, as.gid);
  for (const e of readdirSync(path, { withFileTypes: true })) {
    const p = join(path, e.name);
    if (e.isDirectory()) chownTree(p, as);
    else chownSync(p, as.uid, as.gid);
  }
}

export interface PostgresServer {
  pid: number;
  port: number;
  dataDir: string;
  log: string;
  /**
   * `postgres://sluice@127.0.0.1:<port>/sluice?host=<data directory>`: the Unix socket, or
   * without `host` the TCP port where no socket could be made (local trust authentication).
   */
  url: string;
}

export const postgresUrl = (port: number): string =>
  `postgres://${POSTGRES_USER}@127.0.0.1:${port}/${POSTGRES_DATABASE}`;

/** Longest Unix socket path the kernel takes (`sun_path`, 108 bytes with its final NUL). */
const SOCKET_PATH_MAX = 107;

/**
 * The directory for the server's Unix socket (`<dir>/.s.PGSQL.<port>`): the data directory,
 * unless the socket's path would be too long for the kernel or the directory's name would need
 * quoting in `unix_socket_directories` (a comma-separated list); then none, and TCP only.
 */
export function socketDirFor(dataDir: string, port: number): string | null {
  const dir = resolve(dataDir);
  if (!/^[A-Za-z0-9._/+-]+$/.test(dir)) return null;
  return Buffer.byteLength(join(dir, `.s.PGSQL.${port}`)) <= SOCKET_PATH_MAX ? dir : null;
}

/** The URL of the server's Unix socket in `dir` (the TCP host and port stay, for readers). */
export const postgresSocketUrl = (port: number, dir: string): string =>
  `${postgresUrl(port)}?host=${encodeURIComponent(dir)}`;

/**
 * Initialises `dataDir` when it is new, starts the server on 127.0.0.1:`port` and waits until it
 * accepts connections and has the `sluice` database. The log tells why when it does not start.
 */
export async function startPostgres(o: {
  dataDir: string;
  port: number;
  log: string;
}): Promise<PostgresServer> {
  const bin = postgresBinDir();
  if (!bin)
    throw new SluiceError(
      ErrorCode.ClusterFailure,
      "PostgreSQL is not installed: apt-get install postgresql (Debian's package; its service need not run)",
    );
  const as = runAs();
  if (!existsSync(join(o.dataDir, "PG_VERSION"))) {
    mkdirSync(o.dataDir, { recursive: true, mode: 0o700 });
    if (as !== null) chownTree(o.dataDir, as);
    const [cmd, args] = asServerUser(join(bin, "initdb"), [
      "-D",
      o.dataDir,
      "-U",
      POSTGRES_USER,
      "--auth=trust",
      "--encoding=UTF8",
      "--locale=C",
    ]);
    try {
      execFileSync(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    } catch (err) {
      const e = err as { stderr?: Buffer };
      throw new SluiceError(
        ErrorCode.ClusterFailure,
        `initdb failed for ${o.dataDir}: ${e.stderr?.toString().trim() ?? (err as Error).message}`,
      );
    }
    writeFileSync(
      join(o.dataDir, "postgresql.auto.conf"),
      [
        "listen_addresses = '127.0.0.1'",
        `port = ${o.port}`,
        "unix_socket_directories = ''",
        // Workers each keep a pool; the local cluster's few workers stay far below this.
        "max_connections = 200",
        "",
      ].join("\n"),
    );
    if (as !== null) chownTree(o.dataDir, as);
  }
  // Given on the command line, which outranks the configuration files: a data directory made
  // before the server had a socket (`unix_socket_directories = ''` above) gets one too.
  const socketDir = socketDirFor(o.dataDir, o.port);
  const [cmd, args] = asServerUser(join(bin, "postgres"), [
    "-D",
    o.dataDir,
    "-c",
    `unix_socket_directories=${socketDir ?? ""}`,
  ]);
  const child = spawnLogged(cmd, args, o.log);
  if (child.pid === undefined) throw new SluiceError(ErrorCode.ClusterFailure, "could not start postgres");
  const server = { pid: child.pid, port: o.port, dataDir: o.dataDir, log: o.log, url: postgresUrl(o.port) };
  try {
    await waitPostgresReady(server, 30_000);
  } catch (err) {
    await stopPostgres(child.pid, 5_000);
    throw err;
  }
  if (socketDir !== null && (await answers(postgresSocketUrl(o.port, socketDir))))
    server.url = postgresSocketUrl(o.port, socketDir);
  return server;
}

/** Whether a server answers at `url`. */
async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url });
  try {
    await client.connect();
    await client.query("SELECT 1");
    return true;
  } catch {
    return false;
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Waits until the server accepts connections, then makes the `sluice` database if missing. */
async function waitPostgresReady(s: PostgresServer, deadlineMs: number): Promise<void> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const client = new pg.Client({
      host: "127.0.0.1",
      port: s.port,
      user: POSTGRES_USER,
      database: "postgres",
    });
    try {
      await client.connect();
      // Another server on the port (one this cluster's postgres could not bind beside) would
      // answer too, with someone else's data: only our own data directory counts as ready.
      const dir = await client.query<{ d: string }>("SELECT current_setting('data_directory') AS d");
      if (realpathSync(dir.rows[0]!.d) !== realpathSync(s.dataDir)) {
        throw new SluiceError(
          ErrorCode.ClusterFailure,
          `port ${s.port} on 127.0.0.1 is taken by another PostgreSQL server (data directory ${dir.rows[0]!.d}); stop it or choose another --port-base`,
        );
      }
      const r = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [POSTGRES_DATABASE]);
      if (r.rowCount === 0) await client.query(`CREATE DATABASE ${POSTGRES_DATABASE}`);
      return;
    } catch (err) {
      if (err instanceof SluiceError) throw err;
      let alive = true;
      try {
        process.kill(s.pid, 0);
      } catch {
        alive = false;
      }
      if (!alive || Date.now() > end)
        throw new SluiceError(
          ErrorCode.ClusterFailure,
          `postgres on 127.0.0.1:${s.port} ${alive ? "did not accept connections in time" : "exited while starting"} (${(err as Error).message}); the last lines of its log (${s.log}):\n${logTail(s.log)}`,
        );
      await new Promise((r) => setTimeout(r, 200));
    } finally {
      await client.end().catch(() => undefined);
    }
  }
}

/** Stops the server (fast shutdown: open transactions roll back), waiting up to `graceMs`. */
export async function stopPostgres(pid: number, graceMs = 15_000): Promise<void> {
  try {
    process.kill(pid, "SIGINT");
  } catch {
    return;
  }
  const end = Date.now() + graceMs;
  while (Date.now() < end) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  try {
    process.kill(pid, "SIGKILL");
  } catch {
    // gone
  }
}
