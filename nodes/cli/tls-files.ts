/**
 * A private certificate authority and the certificates a cluster serves, made with the
 * system's `openssl` (no network): `ca.pem` (the one file clients need), and per server name a
 * key and a certificate for 127.0.0.1 and localhost, usable for client connections and for
 * mutual TLS on routes (server and client authentication). Keys are written mode 0600.
 */
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";

export interface TlsFiles {
  dir: string;
  caFile: string;
  /** Server name -> its certificate and key. */
  servers: Map<string, { certFile: string; keyFile: string }>;
}

/** Certificates last 10 years: a local cluster's CA is thrown away with the cluster. */
const DAYS = "3650";

function openssl(args: string[], cwd: string): void {
  try {
    execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
  } catch (cause) {
    const stderr = (cause as { stderr?: Buffer }).stderr?.toString().trim() ?? "";
    throw new SluiceError(
      ErrorCode.ClusterFailure,
      `openssl ${args[0]} failed${stderr ? `: ${stderr}` : ""} (install it with: apt-get install openssl)`,
      { cause },
    );
  }
}

/** A new P-256 key in `keyFile` (mode 0600) with a request for `cn`: `extra` makes it the CA itself. */
function newKey(dir: string, keyFile: string, out: string, cn: string, extra: string[] = []): void {
  const curve = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  openssl(["req", ...extra, ...curve, "-keyout", keyFile, "-out", out, "-subj", `/CN=${cn}`], dir);
  chmodSync(keyFile, 0o600);
}

/** Writes a CA and one certificate per name under `dir` (created mode 0700). */
export function makeTlsFiles(dir: string, names: readonly string[]): TlsFiles {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  newKey(dir, join(dir, "ca-key.pem"), "ca.pem", "sluice local CA", ["-x509", "-days", DAYS]);
  const ext = join(dir, "server.ext");
  writeFileSync(
    ext,
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n",
  );
  const servers = new Map<string, { certFile: string; keyFile: string }>();
  for (const name of names) {
    const keyFile = join(dir, `${name}-key.pem`);
    const certFile = join(dir, `${name}.pem`);
    const csr = join(dir, `${name}.csr`);
    newKey(dir, keyFile, csr, name);
    openssl(
      ["x509", "-req", "-in", csr, "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial"].concat([
        "-out",
        certFile,
        "-days",
        DAYS,
        "-extfile",
        ext,
      ]),
      dir,
    );
    servers.set(name, { certFile, keyFile });
  }
  return { dir, caFile: join(dir, "ca.pem"), servers };
}
