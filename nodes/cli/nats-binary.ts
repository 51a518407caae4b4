/**
 * Which nats-server a local cluster runs: `SLUICE_NATS_SERVER` when set, else the one
 * deploy/nats/install-nats-server.sh put in deploy/nats/bin/, else `nats-server` on PATH. It
 * must be at or above sluice's floor.
 */
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import {
  atLeastVersion,
  NATS_SERVER_FLOOR,
  NATS_SERVER_INSTALL_HINT,
  parseVersion,
} from "../../shared/contract/nats-server.js";

const here = fileURLToPath(new URL(".", import.meta.url));
const root = /[\\/]dist[\\/]nodes[\\/]cli[\\/]?$/.test(here)
  ? resolve(here, "../../..")
  : resolve(here, "../..");
/** Where deploy/nats/install-nats-server.sh puts the binary. */
export const projectNatsServer = join(root, "deploy", "nats", "bin", "nats-server");

/** The nats-server a local cluster runs (not checked; see `checkedNatsServer`). */
export function natsServerBinary(): string {
  const env = process.env.SLUICE_NATS_SERVER;
  if (env) return env;
  return existsSync(projectNatsServer) ? projectNatsServer : "nats-server";
}

/** What `bin --version` says, e.g. "2.15.1"; null when it does not run. */
export function natsServerVersion(bin = natsServerBinary()): string | null {
  try {
    const out = execFileSync(bin, ["--version"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
    const v = /v(\d+\.\d+\.\d+\S*)/.exec(out)?.[1];
    return v && parseVersion(v) ? v : null;
  } catch {
    return null;
  }
}

/** The nats-server to run, with its version; refuses a missing or too old one. */
export function checkedNatsServer(): { bin: string; version: string } {
  const bin = natsServerBinary();
  const version = natsServerVersion(bin);
  if (version === null)
    throw new SluiceError(
      ErrorCode.ClusterFailure,
      `cannot run nats-server (${bin}): ${NATS_SERVER_INSTALL_HINT}`,
    );
  if (!atLeastVersion(version))
    throw new SluiceError(
      ErrorCode.UnsupportedServer,
      `${bin} is nats-server v${version}, older than v${NATS_SERVER_FLOOR}, the oldest sluice runs on: ${NATS_SERVER_INSTALL_HINT}`,
    );
  return { bin, version };
}
