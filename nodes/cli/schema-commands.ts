/**
 * `sluice schema register|list|show|check`: the schema registry of a running cluster (`--dir D`
 * finds it through `D/cluster.json`; `--servers` names any NATS cluster).
 */
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { parse as parseYaml } from "yaml";
import { openSchemaRegistry } from "../../shared/adapters/nats/schema-store.js";
import type { AuditChange } from "../../shared/contract/audit.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import { type CompatibilityMode, isCompatibilityMode } from "../../shared/core/schema-compat.js";
import type { SchemaRegistry } from "../../shared/pipeline/schema-registry.js";
import { recordChange } from "./audit-commands.js";
import { connectTarget } from "./cluster-file.js";
import { intOption } from "./int-option.js";

interface Target {
  dir: string;
  servers?: string;
}

function compatOption(v: string): CompatibilityMode {
  const m = v.toUpperCase();
  if (!isCompatibilityMode(m)) {
    throw new InvalidArgumentError("one of NONE, BACKWARD, FORWARD, FULL and their _TRANSITIVE forms");
  }
  return m;
}

function readSchemaFile(file: string): unknown {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (cause) {
    throw new SluiceError(ErrorCode.InvalidConfig, `cannot read schema ${file}`, { cause });
  }
  try {
    return parseYaml(text);
  } catch (cause) {
    throw new SluiceError(
      ErrorCode.InvalidConfig,
      `schema ${file} is not JSON or YAML: ${(cause as Error).message}`,
      {
        cause,
      },
    );
  }
}

/** `record` appends to the audit stream what a command changed (see `recordChange`). */
async function withRegistry<T>(
  o: Target,
  fn: (r: SchemaRegistry, record: (c: AuditChange) => Promise<void>) => Promise<T>,
): Promise<T> {
  const { nc, servers } = await connectTarget(o, "admin", "sluice-schema");
  try {
    return await fn(await openSchemaRegistry(nc, Math.min(3, servers.length)), (c) =>
      recordChange(nc, servers, c),
    );
  } finally {
    await nc.close();
  }
}

export function addSchemaCommands(program: Command): void {
  const schema = program
    .command("schema")
    .description("the schema registry: subjects, versions, compatibility");
  const target = (c: Command): Command =>
    c
      .option("--dir <dir>", "cluster directory", ".sluice")
      .option("--servers <urls>", "NATS servers, comma-separated (instead of --dir)");

  target(schema.command("register"))
    .description("register a schema as its subject's next version; prints the version and global id")
    .requiredOption("--subject <s>", "subject")
    .requiredOption("--file <f>", "JSON Schema (JSON or YAML)")
    .option(
      "--compat <mode>",
      "set the subject's compatibility mode (default for a new subject: BACKWARD)",
      compatOption,
    )
    .action(async (o: Target & { subject: string; file: string; compat?: CompatibilityMode }) => {
      const s = readSchemaFile(o.file);
      await withRegistry(o, async (reg, record) => {
        const r = await reg.register(o.subject, s, o.compat);
        console.log(`subject ${r.subject}: version ${r.version}, id ${r.id}`);
        // Registering a schema already there (with its mode) changed nothing: nothing to record.
        if (r.change) await record({ kind: "schema", target: { subject: r.subject }, ...r.change });
      });
    });

  target(schema.command("check"))
    .description("whether a schema could be registered under a subject (exit 1, naming each problem, if not)")
    .requiredOption("--subject <s>", "subject")
    .requiredOption("--file <f>", "JSON Schema (JSON or YAML)")
    .option("--compat <mode>", "judge under this mode instead of the subject's", compatOption)
    .action(async (o: Target & { subject: string; file: string; compat?: CompatibilityMode }) => {
      const s = readSchemaFile(o.file);
      const v = await withRegistry(o, (reg) => reg.check(o.subject, s, o.compat));
      if (v.compatible) {
        console.log(
          v.existing
            ? `compatible: already registered as version ${v.existing.version}, id ${v.existing.id}`
            : "compatible",
        );
      } else {
        console.error(`incompatible:\n${v.problems.join("\n")}`);
        process.exitCode = 1;
      }
    });

  target(schema.command("list"))
    .description("subjects with their compatibility mode and latest version (or one subject's versions)")
    .option("--subject <s>", "list this subject's versions")
    .option("--json", "JSON output")
    .action(async (o: Target & { subject?: string; json?: boolean }) => {
      await withRegistry(o, async (reg) => {
        if (o.subject) {
          const s = await reg.subject(o.subject);
          if (!s) throw new SluiceError(ErrorCode.InvalidConfig, `no subject "${o.subject}"`);
          const rows = s.versions.map((v) => ({ version: v.version, id: v.id }));
          console.log(
            o.json
              ? JSON.stringify({ subject: o.subject, compat: s.compat, versions: rows }, null, 2)
              : [
                  `subject ${o.subject} (${s.compat})`,
                  ...rows.map((r) => `  version ${r.version}  id ${r.id}`),
                ].join("\n"),
          );
          return;
        }
        const all = await reg.list();
        if (o.json) console.log(JSON.stringify(all, null, 2));
        else if (all.length === 0) console.log("no subjects");
        else {
          console.log(`${"subject".padEnd(24)} ${"compat".padEnd(20)} latest  id`);
          for (const s of all)
            console.log(
              `${s.subject.padEnd(24)} ${s.compat.padEnd(20)} ${String(s.latest).padEnd(7)} ${s.id}`,
            );
        }
      });
    });

  target(schema.command("show"))
    .description("one version of a subject (the latest by default) as JSON")
    .requiredOption("--subject <s>", "subject")
    .option("--version <n>", "version", intOption("--version", 1))
    .action(async (o: Target & { subject: string; version?: number }) => {
      await withRegistry(o, async (reg) => {
        const v = await reg.version(o.subject, o.version);
        if (!v) {
          throw new SluiceError(
            ErrorCode.InvalidConfig,
            `no ${o.version === undefined ? "version" : `version ${o.version}`} of subject "${o.subject}"`,
          );
        }
        const s = await reg.subject(o.subject);
        console.log(JSON.stringify({ ...v, compat: s?.compat }, null, 2));
      });
    });
}
