/**
 * The audit stream's entries (`AUDIT_STREAM`, README "Security"): who changed a pipeline's config,
 * a schema subject or a reference table, or fenced a shard's sink, when, and the revision before
 * and after. Stored as JSON, one entry per message, so an operator can read the stream with any
 * NATS client (`nats stream view SLUICE_AUDIT`) as well as with `sluice audit`.
 *
 * `at` is wall-clock time of the writer (ms since the Unix epoch): an entry records an act in the
 * outside world, read by people; nothing decides on it, unlike the stages' pinned inputs.
 */
import { z } from "zod";
import { type AuditKind, AuditKinds } from "./wire.js";

/** Who wrote an entry. */
export interface AuditActor {
  /** The writer's role (`Roles`): `worker` for fences, `admin` for an operator's commands. */
  role: string;
  /** The node id (`w2`), or for a command `cli:<os user>@<host>`. */
  id: string;
  /** The NATS user it was connected as; absent without authentication (a local cluster). */
  user?: string;
}

interface Base {
  /** Entry format; a reader skips versions it does not know. */
  v: 1;
  who: AuditActor;
  /** When, ms since the Unix epoch, by the writer's clock. */
  at: number;
}

/** A pipeline's config as provisioned: its revision (`configRevision`, 16 hex digits of SHA-256). */
export interface ConfigAudit extends Base {
  kind: "config";
  target: { pipeline: string };
  /** null: the first provisioning of this pipeline the stream holds. */
  before: { hash: string } | null;
  after: { hash: string };
}

/** A schema registration that wrote the subject (a new version, or a new compatibility mode). */
export interface SchemaAudit extends Base {
  kind: "schema";
  target: { subject: string };
  /** `revision`: the subject's KV revision in `sluice_schemas`. null: a new subject. */
  before: { version: number; compat: string; revision: number } | null;
  after: { version: number; id: number; compat: string; revision: number };
}

/**
 * A reference-table write: one key (`sluice ref put`), or a load (`sluice ref load`, no key), with
 * what it did. Revisions are sequences of the table's stream: the key's for a put (0: it had no
 * entry), the table's last for a load.
 */
export interface RefAudit extends Base {
  kind: "ref";
  target: { table: string; key?: string };
  before: { revision: number } | null;
  after: { revision: number };
  detail?: { file?: string; added: number; changed: number; unchanged: number };
}

/**
 * A shard's sink fenced at a new epoch by the worker acquiring it. `before` is the epoch of the
 * shard's previous assignment and its owner as that worker saw them (null: it saw none, say it
 * started after that assignment); the sink itself may have been fenced there or not.
 */
export interface FenceAudit extends Base {
  kind: "fence";
  target: { pipeline: string; shard: number };
  before: { epoch: number; owner: string | null } | null;
  after: { epoch: number };
}

export type AuditEntry = ConfigAudit | SchemaAudit | RefAudit | FenceAudit;

const actor = z.object({ role: z.string(), id: z.string(), user: z.string().optional() });
const base = { v: z.literal(1), who: actor, at: z.number() };
const rev = z.number().int().nonnegative();
const entrySchema = z.discriminatedUnion("kind", [
  z.object({
    ...base,
    kind: z.literal("config"),
    target: z.object({ pipeline: z.string() }),
    before: z.object({ hash: z.string() }).nullable(),
    after: z.object({ hash: z.string() }),
  }),
  z.object({
    ...base,
    kind: z.literal("schema"),
    target: z.object({ subject: z.string() }),
    before: z.object({ version: rev, compat: z.string(), revision: rev }).nullable(),
    after: z.object({ version: rev, id: rev, compat: z.string(), revision: rev }),
  }),
  z.object({
    ...base,
    kind: z.literal("ref"),
    target: z.object({ table: z.string(), key: z.string().optional() }),
    before: z.object({ revision: rev }).nullable(),
    after: z.object({ revision: rev }),
    detail: z.object({ file: z.string().optional(), added: rev, changed: rev, unchanged: rev }).optional(),
  }),
  z.object({
    ...base,
    kind: z.literal("fence"),
    target: z.object({ pipeline: z.string(), shard: rev }),
    before: z.object({ epoch: rev, owner: z.string().nullable() }).nullable(),
    after: z.object({ epoch: rev }),
  }),
]);

const enc = new TextEncoder();
const dec = new TextDecoder();

export const encodeAudit = (e: AuditEntry): Uint8Array => enc.encode(JSON.stringify(e));

/** An entry from a message's bytes; null for anything that is not one (another writer, a newer format). */
export function decodeAudit(data: Uint8Array): AuditEntry | null {
  let json: unknown;
  try {
    json = JSON.parse(dec.decode(data));
  } catch {
    return null;
  }
  const r = entrySchema.safeParse(json);
  return r.success ? (r.data as AuditEntry) : null;
}

export const isAuditKind = (k: string): k is AuditKind => (AuditKinds as readonly string[]).includes(k);

/** What an entry is about, as one word: `demo`, `orders`, `customers/c1`, `demo.3`. */
export function auditTargetText(e: AuditEntry): string {
  switch (e.kind) {
    case "config":
      return e.target.pipeline;
    case "schema":
      return e.target.subject;
    case "ref":
      return e.target.key === undefined ? e.target.table : `${e.target.table}/${e.target.key}`;
    case "fence":
      return `${e.target.pipeline}.${e.target.shard}`;
  }
}

/** An entry's change as `before -> after`; `-` where there was nothing before. */
export function auditChangeText(e: AuditEntry): string {
  switch (e.kind) {
    case "config":
      return `${e.before?.hash ?? "-"} -> ${e.after.hash}`;
    case "schema": {
      const b = e.before ? `v${e.before.version} ${e.before.compat}` : "-";
      return `${b} -> v${e.after.version} ${e.after.compat} (id ${e.after.id}, revision ${e.after.revision})`;
    }
    case "ref": {
      const d = e.detail
        ? ` (${e.detail.added} added, ${e.detail.changed} changed, ${e.detail.unchanged} unchanged)`
        : "";
      return `revision ${e.before?.revision ?? "-"} -> ${e.after.revision}${d}`;
    }
    case "fence": {
      const b = e.before ? `${e.before.epoch}${e.before.owner ? ` (${e.before.owner})` : ""}` : "-";
      return `epoch ${b} -> ${e.after.epoch}`;
    }
  }
}

/** An entry without its writer and time: what a command changed, before `who` and `at` are added. */
export type AuditChange = WithoutWriter<AuditEntry>;
type WithoutWriter<E> = E extends AuditEntry ? Omit<E, "v" | "who" | "at"> : never;

/** The entry of `change`, written by `who` at `at` (ms since the Unix epoch). */
export const auditEntry = (change: AuditChange, who: AuditActor, at: number): AuditEntry =>
  ({ ...change, v: 1, who, at }) as AuditEntry;
