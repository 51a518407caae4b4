/**
 * The schema registry: subjects with immutable numbered versions, a global id per schema and a
 * compatibility mode per subject (Confluent's modes and meanings, `core/schema-compat.ts`),
 * kept in a JSON store (the `sluice_schemas` KV bucket, `adapters/nats/schema-store.ts`), so no
 * separate registry service is needed. Every write is a compare-and-set, so two registrations racing for
 * a subject's next version cannot both win.
 *
 * Keys: `subject.<S>` holds the subject's mode and its versions (each with its id and schema);
 * `id.<N>` points a global id at its subject and version; `ids` holds the next id to hand out;
 * `subjects` lists the subjects.
 * An id is taken before the version is written, so a registration that fails half-way only
 * leaves an unused id, never two schemas under one id.
 */
import { Ajv, type ValidateFunction } from "ajv";
import { ErrorCode, SluiceError } from "../contract/errors.js";
import type { JsonStore } from "../contract/ports.js";
import {
  type CompatibilityMode,
  compatibilityProblems,
  DEFAULT_COMPATIBILITY,
  type JsonSchema,
} from "../core/schema-compat.js";

export interface RegisteredSchema {
  subject: string;
  version: number;
  id: number;
  schema: JsonSchema;
}

/**
 * A registration's outcome. `change` is set when it wrote the subject (a new version, or a new
 * compatibility mode), for the audit stream: the subject before (null: new) and after, with its
 * KV revisions; `after.version` is the version registered.
 */
export interface Registration extends RegisteredSchema {
  change?: {
    before: { version: number; compat: CompatibilityMode; revision: number } | null;
    after: { version: number; id: number; compat: CompatibilityMode; revision: number };
  };
}

interface SubjectEntry {
  compat: CompatibilityMode;
  versions: Array<{ version: number; id: number; schema: JsonSchema }>;
}
interface IdEntry {
  subject: string;
  version: number;
}
export type RegistryValue = SubjectEntry | IdEntry | { next: number } | { names: string[] };

/** Subject names are one KV key token. */
const SUBJECT = /^[A-Za-z0-9_-]{1,128}$/;

export function checkSubject(subject: string): void {
  if (!SUBJECT.test(subject)) {
    throw new SluiceError(
      ErrorCode.InvalidConfig,
      `schema subject "${subject}": use 1 to 128 letters, digits, '_' or '-'`,
    );
  }
}

/** Refuses what is not a JSON Schema ajv can compile; returns its validator. */
export function compileSchema(schema: unknown, ajv: Ajv = newAjv()): ValidateFunction {
  if (
    typeof schema !== "boolean" &&
    (typeof schema !== "object" || schema === null || Array.isArray(schema))
  ) {
    throw new SluiceError(ErrorCode.InvalidConfig, "a schema must be a JSON Schema object");
  }
  try {
    return ajv.compile(schema as object);
  } catch (err) {
    throw new SluiceError(ErrorCode.InvalidConfig, `not a valid JSON Schema: ${(err as Error).message}`);
  }
}

/**
 * Never coerces (`"12"` is not a number); `$id`s may repeat across versions. `useDefaults` fills
 * a missing property from its `default` while validating (how a pipeline resolves a record);
 * `allErrors` collects every error instead of stopping at the first.
 */
export function newAjv(opts: { useDefaults?: boolean; allErrors?: boolean } = {}): Ajv {
  return new Ajv({
    allErrors: opts.allErrors ?? false,
    useDefaults: opts.useDefaults ?? false,
    coerceTypes: false,
    strict: false,
    addUsedSchema: false,
  });
}

/** Key order does not make two schemas different. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (typeof v === "object" && v !== null) {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)
      .join(",")}}`;
  }
  return JSON.stringify(v);
}

/** The outcome of a check or a registration. */
export type Verdict =
  | { compatible: true; existing?: RegisteredSchema }
  | { compatible: false; problems: string[] };

export class SchemaRegistry {
  constructor(private readonly store: JsonStore<RegistryValue>) {}

  private async subjectEntry(subject: string): Promise<{ entry: SubjectEntry | null; revision: number }> {
    checkSubject(subject);
    const v = await this.store.get(`subject.${subject}`);
    return { entry: v.value as SubjectEntry | null, revision: v.revision };
  }

  /** Whether `schema` could be registered under `subject` (and whether it already is). */
  async check(subject: string, schema: unknown, compat?: CompatibilityMode): Promise<Verdict> {
    compileSchema(schema);
    const { entry } = await this.subjectEntry(subject);
    return verdict(subject, entry, schema as JsonSchema, compat);
  }

  /**
   * Registers `schema` as the subject's next version, or returns the version that already holds
   * the same schema. `compat` sets the subject's mode first (default for a new subject:
   * `BACKWARD`). Refused with `SCHEMA_INCOMPATIBLE`, naming every problem.
   */
  async register(subject: string, schema: unknown, compat?: CompatibilityMode): Promise<Registration> {
    compileSchema(schema);
    for (let attempt = 0; attempt < 20; attempt++) {
      const { entry, revision } = await this.subjectEntry(subject);
      const v = verdict(subject, entry, schema as JsonSchema, compat);
      if (!v.compatible) {
        throw new SluiceError(
          ErrorCode.SchemaIncompatible,
          `schema incompatible with subject "${subject}" (${compat ?? entry?.compat ?? DEFAULT_COMPATIBILITY}):\n${v.problems.join("\n")}`,
        );
      }
      if (v.existing && (compat === undefined || compat === entry?.compat)) return v.existing;
      const id = v.existing?.id ?? (await this.nextId());
      const version = v.existing?.version ?? (entry?.versions.at(-1)?.version ?? 0) + 1;
      const next: SubjectEntry = {
        compat: compat ?? entry?.compat ?? DEFAULT_COMPATIBILITY,
        versions: v.existing
          ? (entry?.versions ?? [])
          : [...(entry?.versions ?? []), { version, id, schema: schema as JsonSchema }],
      };
      let written: number;
      try {
        written = await this.store.compareAndSet(`subject.${subject}`, next, revision);
      } catch (err) {
        if ((err as SluiceError).code === ErrorCode.Conflict) continue;
        throw err;
      }
      if (!v.existing) await this.store.put(`id.${id}`, { subject, version });
      await this.index(subject);
      const before = entry
        ? { version: entry.versions.at(-1)?.version ?? 0, compat: entry.compat, revision }
        : null;
      return {
        subject,
        version,
        id,
        schema: schema as JsonSchema,
        change: { before, after: { version, id, compat: next.compat, revision: written } },
      };
    }
    throw new SluiceError(ErrorCode.Conflict, `subject "${subject}": too many concurrent registrations`, {
      retryable: true,
    });
  }

  private async nextId(): Promise<number> {
    for (;;) {
      const cur = await this.store.get("ids");
      const next = ((cur.value as { next: number } | null)?.next ?? 1) as number;
      try {
        await this.store.compareAndSet("ids", { next: next + 1 }, cur.revision);
        return next;
      } catch (err) {
        if ((err as SluiceError).code !== ErrorCode.Conflict) throw err;
      }
    }
  }

  /** The subject's compatibility mode and versions (oldest first); null if it has none. */
  async subject(
    subject: string,
  ): Promise<{ compat: CompatibilityMode; versions: RegisteredSchema[] } | null> {
    const { entry } = await this.subjectEntry(subject);
    if (!entry) return null;
    return { compat: entry.compat, versions: entry.versions.map((v) => ({ subject, ...v })) };
  }

  /** One version (the latest when `version` is absent); null when there is none. */
  async version(subject: string, version?: number): Promise<RegisteredSchema | null> {
    const s = await this.subject(subject);
    if (!s) return null;
    return (
      (version === undefined ? s.versions.at(-1) : s.versions.find((v) => v.version === version)) ?? null
    );
  }

  /** The schema with global id `id`; null when there is none. */
  async byId(id: number): Promise<RegisteredSchema | null> {
    const ref = (await this.store.get(`id.${id}`)).value as IdEntry | null;
    return ref ? this.version(ref.subject, ref.version) : null;
  }

  /** Every subject with its mode and latest version, by name. */
  async list(): Promise<Array<{ subject: string; compat: CompatibilityMode; latest: number; id: number }>> {
    const names = ((await this.store.get("subjects")).value as { names: string[] } | null)?.names ?? [];
    const out: Array<{ subject: string; compat: CompatibilityMode; latest: number; id: number }> = [];
    for (const subject of [...names].sort()) {
      const s = await this.subject(subject);
      const last = s?.versions.at(-1);
      if (s && last) out.push({ subject, compat: s.compat, latest: last.version, id: last.id });
    }
    return out;
  }

  /** Adds a subject to the `subjects` index (idempotent). */
  private async index(subject: string): Promise<void> {
    for (;;) {
      const cur = await this.store.get("subjects");
      const names = (cur.value as { names: string[] } | null)?.names ?? [];
      if (names.includes(subject)) return;
      try {
        await this.store.compareAndSet("subjects", { names: [...names, subject] }, cur.revision);
        return;
      } catch (err) {
        if ((err as SluiceError).code !== ErrorCode.Conflict) throw err;
      }
    }
  }
}

function verdict(
  subject: string,
  entry: SubjectEntry | null,
  schema: JsonSchema,
  compat: CompatibilityMode | undefined,
): Verdict {
  const versions = entry?.versions ?? [];
  const same = versions.find((v) => canonical(v.schema) === canonical(schema));
  if (same) return { compatible: true, existing: { subject, ...same } };
  const problems = compatibilityProblems(compat ?? entry?.compat ?? DEFAULT_COMPATIBILITY, schema, versions);
  return problems.length === 0 ? { compatible: true } : { compatible: false, problems };
}
