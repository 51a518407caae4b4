/**
 * `sluice audit`: the audit stream of a running cluster (README "Security"), read in order
 * through an ordered consumer that is deleted afterwards (`--dir D` finds the cluster through
 * `D/cluster.json`; `--servers` names any NATS cluster). Also how the writing commands (`schema
 * register`, `ref put|load`) record what they changed.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import {
  AuditLog,
  commandActor,
  ensureAuditStream,
  readAudit,
  type StoredAudit,
} from "../../shared/adapters/nats/audit-log.js";
import {
  type AuditChange,
  auditChangeText,
  auditEntry,
  auditTargetText,
  isAuditKind,
} from "../../shared/contract/audit.js";
import { durationMs } from "../../shared/contract/config.js";
import type { Role } from "../../shared/contract/permissions.js";
import { AUDIT_STREAM, type AuditKind, AuditKinds } from "../../shared/contract/wire.js";
import { connectTarget } from "./cluster-file.js";
import { intOption } from "./int-option.js";

interface Target {
  dir: string;
  servers?: string;
}

/** The user a connection authenticated as (none on an open cluster): who a command is. */
function connectionUser(nc: NatsConnection): string | undefined {
  return (nc as { options?: { user?: string } }).options?.user;
}

/**
 * Records a change a command has just made. The change is made by then, so a failure to record
 * it is reported (stderr, exit status 1) but undoes nothing; the audit stream is created first
 * on a cluster provisioned before it existed.
 */
export async function recordChange(
  nc: NatsConnection,
  servers: readonly string[],
  change: AuditChange,
  role: Role = "admin",
): Promise<void> {
  try {
    await ensureAuditStream(nc, Math.min(3, servers.length));
    await new AuditLog(nc).append(auditEntry(change, commandActor(role, connectionUser(nc)), Date.now()));
  } catch (err) {
    console.error(
      `sluice: the change is made but not recorded in ${AUDIT_STREAM}: ${(err as Error).message}`,
    );
    process.exitCode = 1;
  }
}

function kindsOption(v: string): AuditKind[] {
  const kinds = v.split(",").filter(Boolean);
  for (const k of kinds)
    if (!isAuditKind(k)) throw new InvalidArgumentError(`one or more of ${AuditKinds.join(", ")}`);
  return kinds as AuditKind[];
}

function sinceOption(v: string): number {
  const r = durationMs.safeParse(v);
  if (!r.success) throw new InvalidArgumentError("a duration with units, e.g. 90s, 30m, 24h, 7d");
  return r.data;
}

/** One line per entry: time (ISO, UTC), who, kind, target, before -> after. */
export function formatAuditLine(e: StoredAudit): string {
  const who = `${e.who.id}${e.who.user ? ` (${e.who.user})` : ""}`;
  return `${new Date(e.at).toISOString()}  ${who.padEnd(12)}  ${e.kind.padEnd(6)}  ${auditTargetText(e).padEnd(16)}  ${auditChangeText(e)}`;
}

export function addAuditCommands(program: Command): void {
  program
    .command("audit")
    .description(
      `config, schema and reference-data changes and every fence, from the ${AUDIT_STREAM} stream, oldest first`,
    )
    .option("--dir <dir>", "cluster directory", ".sluice")
    .option("--servers <urls>", "NATS servers, comma-separated (instead of --dir)")
    .option("--kind <kinds>", `only these kinds, comma-separated: ${AuditKinds.join(", ")}`, kindsOption)
    .option("--since <duration>", "only entries stored within this long (e.g. 30m, 24h, 7d)", sinceOption)
    .option("--limit <n>", "only the last N entries", intOption("--limit", 1))
    .option("--json", "JSON output: an array of entries, each with its stream sequence")
    .action(async (o: Target & { kind?: AuditKind[]; since?: number; limit?: number; json?: boolean }) => {
      const { nc } = await connectTarget(o, "reader", "sluice-audit");
      let entries: StoredAudit[];
      try {
        entries = await readAudit(nc, {
          ...(o.kind ? { kinds: o.kind } : {}),
          ...(o.since === undefined ? {} : { sinceMs: Date.now() - o.since }),
          ...(o.limit === undefined ? {} : { limit: o.limit }),
        });
      } finally {
        await nc.close();
      }
      if (o.json) console.log(JSON.stringify(entries, null, 2));
      else if (entries.length === 0) console.log("no audit entries");
      else for (const e of entries) console.log(formatAuditLine(e));
    });
}
