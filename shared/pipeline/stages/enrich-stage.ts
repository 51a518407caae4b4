/**
 * Enrichment from a reference table (README "Enrichment"): the table's entry for the value of the
 * record's `key` field goes into its `into` field; `lineage` records the revision of that entry
 * (0 when there was none). A record whose value has no entry is kept with `into` null
 * (`onMissing: keep`) or rejected with `ENRICH_MISSING` (`onMissing: reject`).
 *
 * Determinism: a record is never decided by "the table as this worker happens to know it" but as
 * of the table revision pinned with the shard's checkpoint (state key `ref:<table>`, see `pin`).
 * A newer revision is pinned, in a commit of its own, before any record is decided by it, so a
 * redelivered batch, or the shard's next owner, gets the same entries. The worker's cache keeps
 * each key's current and previous entry, enough to answer as of any recent revision; a lookup
 * older than both asks the table's store (`ReferenceTable.resolve`), which answers exactly from
 * the bucket's history or fails the batch (retried) when even that no longer holds the answer.
 *
 * The lookup value is the `key` field's own value: a string, or a number (integer or not) or
 * bigint by its decimal text (`42` and `"42"` find the same entry). Anything else (absent, null,
 * a boolean, a map, a list) and text that cannot be a KV key has no entry.
 */
import type { EnrichConfig } from "../../contract/config.js";
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import type { PipelineState } from "../../contract/ports.js";
import {
  historyGoneReason,
  isReferenceKey,
  type ReferenceCache,
  type ReferenceEntry,
} from "../../core/reference-cache.js";
import {
  copyForAdding,
  keep,
  type PipelineRecord,
  recordWith,
  reject,
  type Stage,
  type StageContext,
  type StageDecision,
} from "../stage.js";

export type { ReferenceEntry } from "../../core/reference-cache.js";

/** One reference table as a worker holds it: a cache kept up to date by a watch. */
export interface ReferenceTable {
  /**
   * Why the table cannot be read yet (its initial load is not done, its bucket does not exist),
   * or null once it can. A table that could be read once stays readable: its cache answers as of
   * its revision while the watch is down.
   */
  waiting(): string | null;
  /** Resolves once the table can be read. */
  ready(): Promise<void>;
  /** The revision the cache knows the table as of (0 until loaded): never moves back. */
  revision(): number;
  /**
   * The entry for `key` as of revision `asOf` (at most `revision()`): the entry, null when the key
   * had none then, undefined when the cache cannot tell (then ask `resolve`). No round trip.
   */
  lookup(key: string, asOf: number): ReferenceEntry | null | undefined;
  /**
   * The entry for `key` as of `asOf` from the table's store. Throws a retryable `SluiceError`
   * when it cannot be known any more (the store no longer holds the key's history that far back).
   */
  resolve(key: string, asOf: number): Promise<ReferenceEntry | null>;
}

/** The reference tables of a worker: one cache, and one watch, per table for every stage. */
export interface ReferenceTables {
  table(name: string): ReferenceTable;
}

/**
 * A table answered from a `ReferenceCache` its owner installs (`install`): what every
 * implementation shares. The owner says why it waits (`waiting`) and reads older entries
 * (`resolve`).
 */
export abstract class CachedReferenceTable implements ReferenceTable {
  protected cache: ReferenceCache | null = null;
  private readonly waiters: (() => void)[] = [];

  constructor(protected readonly name: string) {}

  abstract waiting(): string | null;
  abstract resolve(key: string, asOf: number): Promise<ReferenceEntry | null>;

  ready(): Promise<void> {
    return this.cache ? Promise.resolve() : new Promise((resolve) => this.waiters.push(resolve));
  }

  revision(): number {
    return this.cache?.revision ?? 0;
  }

  lookup(key: string, asOf: number): ReferenceEntry | null | undefined {
    return this.cache?.lookup(key, asOf);
  }

  /** Answers from `cache` from now on, and wakes whoever waited for the table. */
  protected install(cache: ReferenceCache): void {
    this.cache = cache;
    for (const w of this.waiters.splice(0)) w();
  }

  /** The bucket no longer holds the entry as of `asOf`: the batch waits, it never guesses. */
  protected historyGone(key: string, asOf: number): never {
    throw new SluiceError(ErrorCode.Unavailable, historyGoneReason(this.name, key, asOf), {
      retryable: true,
    });
  }
}

export interface EnrichStageOptions {
  /** Clock for the pin interval, ms. */
  now(): number;
  /**
   * How often a shard pins a newer revision of the table, at most, ms (default 1 000). Each new
   * pin is a commit without rows, so a table that changes all the time costs each shard one
   * commit per interval; a change reaches records at most this much later than the cache.
   */
  pinEveryMs?: number;
}

/** The key under which a shard's pinned revision of `table` is kept with its checkpoint. */
export const refStateKey = (table: string): string => `ref:${table}`;

const isPlainObject = (v: unknown): v is Record<string, unknown> => {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return false;
  const proto: unknown = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
};

/** A short, stable rendering of a lookup value for a dead letter. */
function show(v: unknown): string {
  if (v === undefined) return "absent";
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === "bigint") return `${v}`;
  if (typeof v === "object")
    return v === null ? "null" : Array.isArray(v) ? "a list" : isPlainObject(v) ? "a map" : "an object";
  return String(v);
}

/**
 * Sets an own property, even one named `__proto__`. Plain assignment otherwise: it hits V8's
 * inline cache, where `defineProperty` is a call into the runtime for every record.
 */
const define = (o: Record<string, unknown>, k: string, v: unknown): void => {
  if (k === "__proto__")
    Object.defineProperty(o, k, { value: v, writable: true, enumerable: true, configurable: true });
  else o[k] = v;
};

export class EnrichStage implements Stage {
  readonly name = "enrich";
  private readonly stateKey: string;
  private readonly keyPath: readonly string[];
  private readonly intoPath: readonly string[];
  private readonly table: ReferenceTable;
  /** The revision shards move their pin to, sampled at most once per `pinEveryMs`. */
  private pinnable = 0;
  private sampledAt = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly cfg: EnrichConfig,
    tables: ReferenceTables,
    private readonly opts: EnrichStageOptions,
  ) {
    this.stateKey = refStateKey(cfg.table);
    this.keyPath = cfg.key.split(".");
    this.intoPath = cfg.into.split(".");
    this.table = tables.table(cfg.table);
  }

  /**
   * The table's revision to pin: the cache's, once loaded. Waits (a retryable error) while the
   * table cannot be read, and while the cache is behind the revision already pinned (the shard's
   * previous owner knew a newer one): no record is decided by a table this worker cannot answer for.
   */
  pin(ctx: StageContext): PipelineState | null {
    const why = this.table.waiting();
    if (why !== null) throw new SluiceError(ErrorCode.Unavailable, why, { retryable: true });
    const rev = this.table.revision();
    const pinned = ctx.state[this.stateKey];
    if (typeof pinned === "number" && pinned > rev) throw this.behind(pinned, rev);
    const now = this.opts.now();
    if (typeof pinned !== "number" || now - this.sampledAt >= (this.opts.pinEveryMs ?? 1_000)) {
      this.pinnable = rev;
      this.sampledAt = now;
    }
    if (typeof pinned === "number" && pinned >= this.pinnable) return null;
    return { [this.stateKey]: this.pinnable };
  }

  private behind(pinned: number, rev: number): SluiceError {
    return new SluiceError(
      ErrorCode.Unavailable,
      `reference table "${this.cfg.table}" is known here as of revision ${rev}, behind revision ${pinned} pinned with the shard's checkpoint: waiting for the watch to catch up`,
      { retryable: true },
    );
  }

  process(
    batch: readonly PipelineRecord[],
    ctx: StageContext,
  ): StageDecision<PipelineRecord>[] | Promise<StageDecision<PipelineRecord>[]> {
    const asOf = ctx.state[this.stateKey];
    if (typeof asOf !== "number")
      throw new Error(`no revision of reference table "${this.cfg.table}" is pinned`);
    const rev = this.table.revision();
    if (rev < asOf) throw this.behind(asOf, rev);
    const out = new Array<StageDecision<PipelineRecord>>(batch.length);
    let unknown: number[] | null = null;
    for (let i = 0; i < batch.length; i++) {
      const r = batch[i]!;
      const raw = this.lookupValue(r.value);
      const key = this.asKey(raw);
      if (key === null) {
        out[i] = this.decide(r, null, raw, asOf);
        continue;
      }
      const entry = this.table.lookup(key, asOf);
      if (entry !== undefined) out[i] = this.decide(r, entry, raw, asOf);
      else if (unknown === null) unknown = [i];
      else unknown.push(i);
    }
    return unknown === null ? out : this.resolveRest(batch, out, unknown, asOf);
  }

  /** The records the cache could not answer for, from the table's store. */
  private async resolveRest(
    batch: readonly PipelineRecord[],
    out: StageDecision<PipelineRecord>[],
    unknown: readonly number[],
    asOf: number,
  ): Promise<StageDecision<PipelineRecord>[]> {
    const byKey = new Map<string, Promise<ReferenceEntry | null>>();
    for (const i of unknown) {
      const key = this.asKey(this.lookupValue(batch[i]!.value))!;
      if (!byKey.has(key)) byKey.set(key, this.table.resolve(key, asOf));
    }
    // Every read is under way before the first is awaited; a failed one fails the batch.
    const settled = await Promise.all(byKey.values());
    const found = new Map([...byKey.keys()].map((k, j) => [k, settled[j]!]));
    for (const i of unknown) {
      const raw = this.lookupValue(batch[i]!.value);
      out[i] = this.decide(batch[i]!, found.get(this.asKey(raw)!)!, raw, asOf);
    }
    return out;
  }

  /** The `key` field's value, through own properties only. */
  private lookupValue(v: unknown): unknown {
    for (const p of this.keyPath) {
      if (typeof v !== "object" || v === null || !Object.hasOwn(v, p)) return undefined;
      v = (v as Record<string, unknown>)[p];
    }
    return v;
  }

  /** The table key a lookup value names, or null when it names none. */
  private asKey(v: unknown): string | null {
    let key: string;
    if (typeof v === "string") key = v;
    else if ((typeof v === "number" && Number.isFinite(v)) || typeof v === "bigint") key = String(v);
    else return null;
    return isReferenceKey(key) ? key : null;
  }

  private decide(
    r: PipelineRecord,
    entry: ReferenceEntry | null,
    raw: unknown,
    asOf: number,
  ): StageDecision<PipelineRecord> {
    if (entry === null && this.cfg.onMissing === "reject")
      return reject({
        ok: false,
        code: ErrorCode.EnrichMissing,
        message: `table "${this.cfg.table}" has no entry for ${this.cfg.key} ${show(raw)} as of revision ${asOf}`,
      });
    const value = this.setInto(r.value, entry === null ? null : entry.value);
    if (typeof value === "string")
      return reject({ ok: false, code: ErrorCode.EnrichMissing, message: value });
    const revision = entry === null ? 0 : entry.revision;
    // One table's lineage, the common case, without a spread of the record's.
    const lineage =
      r.lineage === undefined ? { [this.cfg.table]: revision } : { ...r.lineage, [this.cfg.table]: revision };
    return keep(recordWith(r, value, lineage));
  }

  /**
   * `root` with `into` set to `v`, copying each map on the way (the record's value is never
   * changed in place); a missing map on the way is made. A string: why it cannot be set.
   */
  private setInto(root: Record<string, unknown>, v: unknown): Record<string, unknown> | string {
    const out = copyForAdding(root);
    let cur = out;
    const last = this.intoPath.length - 1;
    for (let i = 0; i < last; i++) {
      const p = this.intoPath[i]!;
      const next = Object.hasOwn(cur, p) ? cur[p] : undefined;
      let copy: Record<string, unknown>;
      if (next === undefined || next === null) copy = {};
      else if (isPlainObject(next)) copy = copyForAdding(next);
      else
        return `table "${this.cfg.table}": cannot set ${this.cfg.into}: ${this.intoPath.slice(0, i + 1).join(".")} is ${show(next)}, not a map`;
      define(cur, p, copy);
      cur = copy;
    }
    define(cur, this.intoPath[last]!, v);
    return out;
  }
}
