/**
 * `sluice ref put|get|load`: the reference tables an `enrich` stage reads (README "Enrichment"),
 * one NATS KV bucket per table (`sluice_ref_<table>`), JSON values keyed by the lookup value.
 * `--dir D` finds the cluster through `D/cluster.json`; `--servers` names any NATS cluster. A
 * table's bucket is made by its first put or load.
 */
import { readFileSync } from "node:fs";
import { extname } from "node:path";
import { jetstreamManager } from "@nats-io/jetstream";
import type { KV } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import { parse as parseCsv } from "csv-parse/sync";
import {
  getReference,
  loadReferences,
  openReferenceBucket,
  putReferenceChange,
  readAsOf,
} from "../../shared/adapters/nats/reference-tables.js";
import type { AuditChange } from "../../shared/contract/audit.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import { refBucket } from "../../shared/contract/wire.js";
import { isReferenceKey } from "../../shared/core/reference-cache.js";
import { recordChange } from "./audit-commands.js";
import { connectTarget } from "./cluster-file.js";
import { intOption } from "./int-option.js";

interface Target {
  dir: string;
  servers?: string;
  table: string;
}

/** Errors of a file named at most this many at once. */
const ERRORS_SHOWN = 10;

const invalid = (message: string): SluiceError => new SluiceError(ErrorCode.InvalidConfig, message);

function tableOption(v: string): string {
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(v))
    throw new InvalidArgumentError("a table name: 1 to 64 letters, digits, _ or -");
  return v;
}

function keyOption(v: string): string {
  if (!isReferenceKey(v))
    throw new InvalidArgumentError("a KV key: letters, digits and -/_=. (dots only between tokens)");
  return v;
}

async function withTable<T>(
  o: Target,
  create: boolean,
  fn: (kv: KV, nc: NatsConnection, record: (c: AuditChange) => Promise<void>) => Promise<T>,
): Promise<T> {
  const { nc, servers } = await connectTarget(o, "admin", "sluice-ref");
  try {
    const kv = await openReferenceBucket(
      nc,
      o.table,
      create ? { replicas: Math.min(3, servers.length) } : undefined,
    );
    if (!kv) throw invalid(`no reference table "${o.table}" (no KV bucket ${refBucket(o.table)})`);
    return await fn(kv, nc, (c) => recordChange(nc, servers, c));
  } finally {
    await nc.close();
  }
}

/** A lookup value as a table key: text, or a number by its decimal text; null for anything else. */
function keyText(v: unknown): string | null {
  if (typeof v === "string") return v;
  if ((typeof v === "number" && Number.isFinite(v)) || typeof v === "bigint") return String(v);
  return null;
}

/** The value at a dotted path, through own properties only. */
function field(v: unknown, path: string): unknown {
  for (const p of path.split(".")) {
    if (typeof v !== "object" || v === null || !Object.hasOwn(v, p)) return undefined;
    v = (v as Record<string, unknown>)[p];
  }
  return v;
}

export type RefFormat = "jsonl" | "csv";

function formatOf(file: string, format: string | undefined): RefFormat {
  const f = (format ?? "").toLowerCase();
  if (f === "jsonl" || f === "csv") return f;
  if (f !== "") throw invalid(`--format ${format}: use jsonl or csv`);
  const ext = extname(file).toLowerCase();
  if (ext === ".csv") return "csv";
  if (ext === ".jsonl" || ext === ".ndjson" || ext === ".json") return "jsonl";
  throw invalid(`cannot tell the format of ${file} from its extension: name it with --format jsonl|csv`);
}

/**
 * The entries of a JSON lines or CSV file, by key (a later row for the same key wins): each row
 * (a JSON object, or a CSV row as an object of text by the header's column names) is the value,
 * its `keyField` the key. Every bad row is an error; none is skipped.
 */
export function readReferenceFile(text: string, format: RefFormat, keyField: string): Map<string, unknown> {
  const rows: { line: number; value: unknown }[] = [];
  const errors: string[] = [];
  if (format === "csv") {
    let parsed: { record: Record<string, string>; info: { lines: number } }[];
    try {
      parsed = parseCsv(text, { columns: true, bom: true, skip_empty_lines: true, info: true });
    } catch (err) {
      throw invalid(`not CSV with a header row: ${(err as Error).message}`);
    }
    for (const p of parsed) rows.push({ line: p.info.lines, value: p.record });
  } else {
    text.split(/\r?\n/).forEach((l, i) => {
      if (l.trim() === "") return;
      try {
        rows.push({ line: i + 1, value: JSON.parse(l) as unknown });
      } catch (err) {
        errors.push(`line ${i + 1}: not JSON: ${(err as Error).message}`);
      }
    });
  }
  const out = new Map<string, unknown>();
  for (const { line, value } of rows) {
    const raw = field(value, keyField);
    const key = keyText(raw);
    if (typeof value !== "object" || value === null || Array.isArray(value))
      errors.push(`line ${line}: not an object`);
    else if (key === null)
      errors.push(
        `line ${line}: ${keyField} is ${raw === undefined ? "absent" : JSON.stringify(raw)}, not text or a number`,
      );
    else if (!isReferenceKey(key))
      errors.push(
        `line ${line}: ${keyField} ${JSON.stringify(key)} cannot be a table key (letters, digits and -/_=. only)`,
      );
    else out.set(key, value);
  }
  if (errors.length > 0) {
    const more = errors.length > ERRORS_SHOWN ? `\n(and ${errors.length - ERRORS_SHOWN} more)` : "";
    throw invalid(
      `nothing was written, ${errors.length} bad row(s):\n${errors.slice(0, ERRORS_SHOWN).join("\n")}${more}`,
    );
  }
  return out;
}

export function addRefCommands(program: Command): void {
  const ref = program
    .command("ref")
    .description("reference tables for enrich stages: one KV bucket per table, JSON values by key");
  const target = (c: Command): Command =>
    c
      .requiredOption("--table <t>", "table name", tableOption)
      .option("--dir <dir>", "cluster directory", ".sluice")
      .option("--servers <urls>", "NATS servers, comma-separated (instead of --dir)");

  target(ref.command("put"))
    .description("write one entry (the table is made by its first write); prints its revision")
    .requiredOption("--key <k>", "the lookup value", keyOption)
    .requiredOption("--value <json>", "the entry, JSON")
    .action(async (o: Target & { key: string; value: string }) => {
      let value: unknown;
      try {
        value = JSON.parse(o.value);
      } catch (err) {
        throw invalid(`--value is not JSON: ${(err as Error).message}`);
      }
      await withTable(o, true, async (kv, _nc, record) => {
        const w = await putReferenceChange(kv, o.key, value);
        console.log(`table ${o.table}: ${o.key} at revision ${w.revision}`);
        await record({
          kind: "ref",
          target: { table: o.table, key: o.key },
          before: w.previous === 0 ? null : { revision: w.previous },
          after: { revision: w.revision },
        });
      });
    });

  target(ref.command("get"))
    .description("one entry and its revision (exit 1 if none)")
    .requiredOption("--key <k>", "the lookup value", keyOption)
    .option(
      "--as-of <revision>",
      "the entry in force at this table revision (a row's lineage), while the bucket still holds it",
      intOption("--as-of", 1),
    )
    .option("--json", "JSON output: {table, key, revision, value}")
    .action(async (o: Target & { key: string; asOf?: number; json?: boolean }) => {
      const e = await withTable(o, false, async (kv, nc) => {
        if (o.asOf === undefined) return getReference(kv, o.key);
        const found = await readAsOf(await jetstreamManager(nc), o.table, o.key, o.asOf);
        if (found === undefined)
          throw invalid(
            `table ${o.table} no longer holds the entry for ${o.key} as of revision ${o.asOf} (it keeps a few versions per key)`,
          );
        return found;
      });
      const asOf = o.asOf === undefined ? "" : ` as of revision ${o.asOf}`;
      if (!e) {
        console.error(`table ${o.table} has no entry for ${o.key}${asOf}`);
        process.exitCode = 1;
        return;
      }
      if (o.json)
        console.log(JSON.stringify({ table: o.table, key: o.key, revision: e.revision, value: e.value }));
      else console.log(`revision ${e.revision}\n${JSON.stringify(e.value, null, 2)}`);
    });

  target(ref.command("load"))
    .description(
      "write every row of a JSON lines or CSV file (with a header row) as an entry keyed by its key field; rows equal to the stored entry are left alone",
    )
    .requiredOption("--file <f>", "JSON lines (.jsonl, .ndjson, .json) or CSV (.csv) file")
    .option("--key-field <name>", "the field whose value is the key", "id")
    .option("--format <format>", "jsonl or csv (default: by the file's extension)")
    .action(async (o: Target & { file: string; keyField: string; format?: string }) => {
      const format = formatOf(o.file, o.format);
      let text: string;
      try {
        text = readFileSync(o.file, "utf8");
      } catch (cause) {
        throw new SluiceError(ErrorCode.InvalidConfig, `cannot read ${o.file}`, { cause });
      }
      const entries = readReferenceFile(text, format, o.keyField);
      await withTable(o, true, async (kv, nc, record) => {
        // The table's revision before the load: its stream's last sequence (0: never written).
        const before = (await kv.status()).streamInfo.state.last_seq;
        const s = await loadReferences(nc, kv, o.table, entries);
        console.log(
          `table ${o.table}: ${entries.size} entries from ${o.file}: ${s.added} added, ${s.changed} changed, ${s.unchanged} unchanged${s.revision > 0 ? `; revision ${s.revision}` : ""}`,
        );
        // A load that wrote nothing changed nothing: nothing to record.
        if (s.revision === 0) return;
        await record({
          kind: "ref",
          target: { table: o.table },
          before: before === 0 ? null : { revision: before },
          after: { revision: s.revision },
          detail: { file: o.file, added: s.added, changed: s.changed, unchanged: s.unchanged },
        });
      });
    });
}
