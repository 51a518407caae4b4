/**
 * The secrets of a secured local cluster (README "Security"), made once per cluster directory
 * and kept across `down`/`up` (a new key would make the encrypted store unreadable):
 * - `credentials/<role>.json` (mode 0600): `{user, password, inboxPrefix}` per role, what any
 *   NATS client needs to connect as that role;
 * - `credentials/jetstream.key` (mode 0600): the key JetStream encrypts its store with;
 * - `tls/ca.pem`: the private CA every client trusts, and per NATS node its certificate and key
 *   (`tls/nN.pem`, `tls/nN-key.pem`), used for client TLS and mutual TLS on routes.
 */
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { TlsFiles as ClientTlsFiles } from "../../shared/adapters/nats/connection.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import { inboxPrefixOf, type Role, type RoleCredentials, Roles } from "../../shared/contract/permissions.js";
import { makeTlsFiles } from "./tls-files.js";

/** Where a secured cluster keeps its secrets, as `cluster.json` records it. */
export interface ClusterSecurity {
  /** `<dir>/credentials`: one `<role>.json` per role and `jetstream.key`. */
  credentialsDir: string;
  /** `<dir>/tls`: the CA (`ca.pem`) and each NATS node's certificate and key. */
  tlsDir: string;
}

export const credentialsFile = (s: ClusterSecurity, role: Role): string =>
  join(s.credentialsDir, `${role}.json`);
export const caFile = (s: ClusterSecurity): string => join(s.tlsDir, "ca.pem");
export const jetstreamKeyFile = (s: ClusterSecurity): string => join(s.credentialsDir, "jetstream.key");

/** A role's credentials, read from its file. */
export function readCredentials(s: ClusterSecurity, role: Role): RoleCredentials {
  const file = credentialsFile(s, role);
  try {
    return JSON.parse(readFileSync(file, "utf8")) as RoleCredentials;
  } catch (cause) {
    throw new SluiceError(ErrorCode.ClusterFailure, `cannot read the ${role} credentials (${file})`, {
      cause,
    });
  }
}

/** The TLS files a client of the cluster uses: the CA only (servers ask no client certificate). */
export const clientTls = (s: ClusterSecurity): ClientTlsFiles => ({ caFile: caFile(s) });

/** 32 random bytes, URL-safe base64: printable in a NATS config and a JSON file as is. */
const secret = (): string => randomBytes(32).toString("base64url");

function writePrivate(file: string, text: string): void {
  writeFileSync(file, text, { mode: 0o600 });
  chmodSync(file, 0o600);
}

/**
 * Makes the cluster's secrets under `dir` where they are missing (certificates for `natsIds`),
 * and returns where they are. Existing ones are kept, so restarting a cluster keeps its
 * passwords, its CA and the key its store is encrypted with.
 */
export function ensureClusterSecrets(dir: string, natsIds: readonly string[]): ClusterSecurity {
  const s: ClusterSecurity = { credentialsDir: join(dir, "credentials"), tlsDir: join(dir, "tls") };
  mkdirSync(s.credentialsDir, { recursive: true, mode: 0o700 });
  chmodSync(s.credentialsDir, 0o700);
  for (const role of Roles) {
    if (existsSync(credentialsFile(s, role))) continue;
    const creds: RoleCredentials = { user: role, password: secret(), inboxPrefix: inboxPrefixOf(role) };
    writePrivate(credentialsFile(s, role), `${JSON.stringify(creds, null, 2)}\n`);
  }
  if (!existsSync(jetstreamKeyFile(s))) writePrivate(jetstreamKeyFile(s), `${secret()}\n`);
  const haveCerts = existsSync(caFile(s)) && natsIds.every((id) => existsSync(join(s.tlsDir, `${id}.pem`)));
  if (!haveCerts) makeTlsFiles(s.tlsDir, natsIds);
  return s;
}

/** Every role's password, for the server's accounts block. */
export function rolePasswords(s: ClusterSecurity): Record<Role, string> {
  return Object.fromEntries(Roles.map((r) => [r, readCredentials(s, r).password])) as Record<Role, string>;
}

export const jetstreamKey = (s: ClusterSecurity): string => readFileSync(jetstreamKeyFile(s), "utf8").trim();
