/**
 * The NATS server versions sluice runs on. The floor is the oldest release with every server
 * feature sluice relies on (see the README, "NATS server"); nodes refuse an older server at
 * connect, and `sluice up` refuses an older binary.
 */

/** Keep in step with `floor` in deploy/nats/install-nats-server.sh. */
export const NATS_SERVER_FLOOR = "2.12.12";

/** How to get a current server, for messages that refuse an old one. */
export const NATS_SERVER_INSTALL_HINT =
  "run 'bash deploy/nats/install-nats-server.sh' (Debian's testing suite carries a current nats-server) or install one from nats.io";

/** `[major, minor, patch]` of a version such as "2.15.1" or "v2.15.1-RC.2"; null when unreadable. */
export function parseVersion(v: string): [number, number, number] | null {
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(v.trim());
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : null;
}

/** True when `version` is at or above `floor`. An unreadable version is not. */
export function atLeastVersion(version: string, floor = NATS_SERVER_FLOOR): boolean {
  const a = parseVersion(version);
  const b = parseVersion(floor);
  if (!a || !b) return false;
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i]! > b[i]!;
  return true;
}
