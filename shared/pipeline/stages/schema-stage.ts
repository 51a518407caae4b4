/**
 * Validation against a schema subject of the registry: every record is checked against the
 * subject's version pinned with the shard's checkpoint, or first against the version its
 * `Sluice-Schema-Id` header names (the writer's schema) and then resolved to the pinned one
 * (unknown fields dropped, missing ones filled from `default`). A record that fails is
 * rejected with `SCHEMA_VIOLATION` and the validator's first errors; one that passes goes on
 * as resolved.
 *
 * Determinism: the version a record is judged by is never "the latest the worker happens to
 * know" but the one pinned with the checkpoint (`pin`). A newer version is pinned, in a commit of
 * its own, before any record is judged by it, so a batch redelivered after a registration is
 * judged exactly as the attempt that may already have dead-lettered part of it. Versions are
 * immutable, so the set of ids a header may name (versions up to the pinned one) is pinned too.
 */
import type { ValidateFunction } from "ajv";
import { headerOf } from "../../contract/codec.js";
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import type { PipelineState } from "../../contract/ports.js";
import { Headers } from "../../contract/wire.js";
import { type JsonSchema, resolveRecord } from "../../core/schema-compat.js";
import type { RegisteredSchema } from "../schema-registry.js";
import { compileSchema, newAjv } from "../schema-registry.js";
import {
  keep,
  type PipelineRecord,
  recordWith,
  reject,
  type Stage,
  type StageContext,
  type StageDecision,
} from "../stage.js";

/** Where the stage reads a subject's versions (the registry, `SchemaRegistry.subject`). */
export interface SchemaSource {
  subject(name: string): Promise<{ versions: RegisteredSchema[] } | null>;
}

export interface SchemaStageOptions {
  /** Clock for the refresh interval, ms. */
  now(): number;
  /**
   * How often the subject's versions are read again, ms (default 1 000): how long a newly
   * registered version may take to be pinned.
   */
  refreshMs?: number;
}

/** The key under which a shard's pinned version of `subject` is kept with its checkpoint. */
export const schemaStateKey = (subject: string): string => `schema:${subject}`;

/** How many of the validator's errors a dead letter names. */
const ERRORS_SHOWN = 3;

interface Compiled {
  entry: RegisteredSchema;
  validate: ValidateFunction;
  /** The same schema collecting every error: run only on a failure, to name the first few. */
  all: ValidateFunction | null;
}

export class SchemaStage implements Stage {
  readonly name = "schema";
  private readonly key: string;
  private versions: RegisteredSchema[] = [];
  private fetchedAt = Number.NEGATIVE_INFINITY;
  private fetching: Promise<void> | null = null;
  private readonly compiled = new Map<number, Compiled>();
  // Defaults are filled while validating: a valid record leaves the stage resolved.
  private readonly ajv = newAjv({ useDefaults: true });
  private readonly ajvAll = newAjv({ useDefaults: true, allErrors: true });

  constructor(
    readonly subject: string,
    private readonly source: SchemaSource,
    private readonly opts: SchemaStageOptions,
  ) {
    this.key = schemaStateKey(subject);
  }

  /** Reads the subject's versions again; one read at a time, shared by every shard. */
  private refresh(): Promise<void> {
    this.fetching ??= this.source
      .subject(this.subject)
      .then((s) => {
        if (s && s.versions.length >= this.versions.length) this.versions = s.versions;
        this.fetchedAt = this.opts.now();
      })
      .finally(() => {
        this.fetching = null;
      });
    return this.fetching;
  }

  async pin(ctx: StageContext): Promise<PipelineState | null> {
    const pinned = ctx.state[this.key];
    if (this.opts.now() - this.fetchedAt >= (this.opts.refreshMs ?? 1_000)) {
      try {
        await this.refresh();
      } catch (err) {
        // The registry is unreachable: a shard with a pinned version goes on with it.
        if (typeof pinned === "number") return null;
        throw new SluiceError(
          ErrorCode.Unavailable,
          `schema subject "${this.subject}" cannot be read: ${(err as Error).message}`,
          { retryable: true, cause: err },
        );
      }
    }
    const latest = this.versions.at(-1);
    if (!latest) {
      if (typeof pinned === "number") return null;
      throw new SluiceError(
        ErrorCode.SchemaSubjectMissing,
        `schema subject "${this.subject}" is not registered: the shard waits for it (sluice schema register --subject ${this.subject} --file F)`,
        { retryable: true },
      );
    }
    return typeof pinned === "number" && pinned >= latest.version ? null : { [this.key]: latest.version };
  }

  async process(
    batch: readonly PipelineRecord[],
    ctx: StageContext,
  ): Promise<StageDecision<PipelineRecord>[]> {
    const pinned = ctx.state[this.key];
    if (typeof pinned !== "number")
      throw new Error(`no version of schema subject "${this.subject}" is pinned`);
    const reader = await this.version(pinned);
    return batch.map((r) => this.decide(r, reader));
  }

  /** Version `v` compiled; read from the registry when this worker has not seen it yet. */
  private async version(v: number): Promise<Compiled> {
    const have = this.compiled.get(v);
    if (have) return have;
    let entry = this.versions.find((x) => x.version === v);
    if (!entry) {
      await this.refresh();
      entry = this.versions.find((x) => x.version === v);
      if (!entry) throw new Error(`schema subject "${this.subject}" has no version ${v}`);
    }
    const c: Compiled = { entry, validate: compileSchema(entry.schema, this.ajv), all: null };
    this.compiled.set(v, c);
    return c;
  }

  private decide(r: PipelineRecord, reader: Compiled): StageDecision<PipelineRecord> {
    let value: unknown = r.value;
    const idText = headerOf(r.message, Headers.schemaId);
    if (idText !== undefined) {
      const writer = this.writer(idText, reader.entry.version);
      if (typeof writer === "string") return violation(writer);
      if (writer.entry.version !== reader.entry.version) {
        if (!writer.validate(value)) return violation(this.errors(writer, value, "writer's schema"));
        value = resolveRecord(value, reader.entry.schema as JsonSchema);
      }
    }
    if (!reader.validate(value)) return violation(this.errors(reader, value));
    return keep(value === r.value ? r : recordWith(r, value as PipelineRecord["value"]));
  }

  /** The version a `Sluice-Schema-Id` names, if it is one of this subject's up to `upTo`. */
  private writer(idText: string, upTo: number): Compiled | string {
    const id = /^\d{1,15}$/.test(idText.trim()) ? Number(idText.trim()) : Number.NaN;
    if (Number.isNaN(id)) return `${Headers.schemaId} "${idText.slice(0, 40)}" is not a schema id`;
    const entry = this.versions.find((x) => x.id === id && x.version <= upTo);
    if (!entry) return `schema id ${id} is not a version of subject "${this.subject}" up to version ${upTo}`;
    let c = this.compiled.get(entry.version);
    if (!c) {
      c = { entry, validate: compileSchema(entry.schema, this.ajv), all: null };
      this.compiled.set(entry.version, c);
    }
    return c;
  }

  /** The first errors of a failed validation, as `pointer: message`. */
  private errors(c: Compiled, value: unknown, which = "schema"): string {
    c.all ??= compileSchema(c.entry.schema, this.ajvAll);
    c.all(value);
    const errs = (c.all.errors ?? c.validate.errors ?? []).slice(0, ERRORS_SHOWN);
    const text = errs.map((e) => `${e.instancePath || "/"}: ${e.message ?? "invalid"}`).join("; ");
    return `${this.subject} v${c.entry.version} (${which}): ${text || "invalid"}`;
  }
}

const violation = (message: string): StageDecision<PipelineRecord> =>
  reject({ ok: false, code: ErrorCode.SchemaViolation, message });
