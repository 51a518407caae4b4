/**
 * A private PostgreSQL server for one test file: Debian's binaries, a data directory of its
 * own, a free port on 127.0.0.1; stopped (and its files removed) by `stop()`. Tests never share
 * a server with another test file or with anything outside the test.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import {
  POSTGRES_USER,
  type PostgresServer,
  postgresUrl,
  startPostgres,
  stopPostgres,
} from "../../nodes/cli/postgres-server.js";
import { freePort } from "./free-port.js";

export interface TestPostgres {
  server: PostgresServer;
  /** A database of its own on the server: `postgres://sluice@127.0.0.1:<port>/<name>`. */
  newDatabase(name: string): Promise<string>;
  stop(): Promise<void>;
}

export async function startTestPostgres(): Promise<TestPostgres> {
  const dir = mkdtempSync(join(tmpdir(), "sluice-pg-"));
  const server = await startPostgres({
    dataDir: join(dir, "data"),
    port: await freePort(),
    log: join(dir, "pg.log"),
  });
  return {
    server,
    async newDatabase(name: string): Promise<string> {
      const c = new pg.Client({
        host: "127.0.0.1",
        port: server.port,
        user: POSTGRES_USER,
        database: "postgres",
      });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS "${name}"`);
        await c.query(`CREATE DATABASE "${name}"`);
      } finally {
        await c.end();
      }
      return postgresUrl(server.port).replace(/\/[^/]*$/, `/${name}`);
    },
    async stop(): Promise<void> {
      await stopPostgres(server.pid);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
