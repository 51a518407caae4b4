/**
 * A reference table as a worker holds it (README "Enrichment"): every key's current entry and its
 * previous one, as a watch of the table's KV bucket delivers them, so the enrich stage answers
 * "the entry for key K as of revision R" without a round trip.
 *
 * A revision is a sequence of the bucket's stream: every change of any key takes the next one.
 * The cache knows the table "as of" its `revision`: every change up to it has been applied. A
 * key's history is kept one step deep: its current entry (or its deletion) with the revision
 * that wrote it, and the entry that change replaced, when the cache can be sure which one that
 * was. An answer as of R is then exact when R is at or after the current entry, or at or after
 * the previous one; older than both, the cache says it cannot tell (`undefined`) and the caller
 * asks the bucket itself.
 *
 * Which entry a change replaced comes from the change itself: a writer that sets the
 * `Nats-Expected-Last-Subject-Sequence` header (every `sluice ref` write, KV create/update) names
 * the key's previous revision, and the server refused the write unless it was right. A change
 * without it is taken to replace the cached entry only when the watch saw every change between
 * them (`inferPrevious`); changes of the initial snapshot never are.
 *
 * Memory: one Map entry per key ever written and not purged (deleted keys too), each a slot
 * of four fields and up to two entry objects holding parsed, frozen JSON values: about 200
 * bytes plus the key and the value (twice the value while the previous version is kept). It
 * does not grow with records looked up, nor with updates of existing keys.
 */

/** A table's entry for a key: its JSON value and the revision that wrote it. */
export interface ReferenceEntry {
  readonly value: unknown;
  readonly revision: number;
}

/** One change of a table, as the watch delivers it. */
export interface ReferenceChange {
  key: string;
  revision: number;
  /** The entry's JSON value; ignored for a deletion. */
  value: unknown;
  /** A delete or purge marker: the key has no entry from this revision on. */
  deleted: boolean;
  /**
   * The key's previous revision as its writer stated it (`Nats-Expected-Last-Subject-Sequence`);
   * 0: the key had no entry. Undefined when the writer did not say.
   */
  previous?: number;
}

/**
 * A key's last two states. `cur`/`prev` null: deleted (or, for `prev` with `prevRev` 0, never
 * written); `prev` undefined: the cache does not know that state's value.
 */
interface Slot {
  curRev: number;
  cur: ReferenceEntry | null;
  /** The revision `cur` replaced; 0: none (the key was new); -1: unknown. */
  prevRev: number;
  prev: ReferenceEntry | null | undefined;
}

/**
 * Whether `key` can be a key of a reference table: what a NATS KV key may be (letters, digits and
 * `-/_=.`, dots only between tokens). A lookup value that is not one has no entry.
 */
export const isReferenceKey = (key: string): boolean =>
  /^[-/=.\w]+$/.test(key) && !key.startsWith(".") && !key.endsWith(".") && !key.includes("..");

/** `v` and everything it holds made read-only: entries are shared by every record that used them. */
function deepFreeze<T>(v: T): T {
  if (typeof v === "object" && v !== null && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}

export class ReferenceCache {
  private readonly slots = new Map<string, Slot>();
  private rev = 0;

  /** The revision the cache knows the table as of: every change up to it is applied. */
  get revision(): number {
    return this.rev;
  }

  /** Keys held, deleted ones included. */
  get size(): number {
    return this.slots.size;
  }

  /** Moves the high-water mark on (never back): every change up to `revision` has been applied. */
  advance(revision: number): void {
    if (revision > this.rev) this.rev = revision;
  }

  /**
   * Applies one change. `inferPrevious`: the watch delivered every change of the table since the
   * key's cached entry (or since the snapshot, for a key not cached), so a change that does not
   * name its previous revision replaced the cached entry. Older or repeated changes are ignored.
   */
  apply(c: ReferenceChange, inferPrevious: boolean): void {
    const entry: ReferenceEntry | null = c.deleted
      ? null
      : { value: deepFreeze(c.value), revision: c.revision };
    const slot = this.slots.get(c.key);
    const previous = c.previous ?? (inferPrevious ? (slot?.curRev ?? 0) : -1);
    if (!slot) {
      this.slots.set(c.key, {
        curRev: c.revision,
        cur: entry,
        prevRev: previous,
        prev: previous === 0 ? null : undefined,
      });
      return;
    }
    if (c.revision <= slot.curRev) return;
    slot.prev = previous === 0 ? null : previous === slot.curRev ? slot.cur : undefined;
    slot.prevRev = previous;
    slot.curRev = c.revision;
    slot.cur = entry;
  }

  /**
   * The entry for `key` as of revision `asOf` (at most `revision`): the entry, null when the key
   * had none then (never written, deleted, or first written after `asOf`), undefined when the
   * cache cannot tell (`asOf` is older than both states it keeps of the key).
   */
  lookup(key: string, asOf: number): ReferenceEntry | null | undefined {
    const s = this.slots.get(key);
    if (s === undefined) return null;
    if (s.curRev <= asOf) return s.cur;
    if (s.prevRev >= 0 && s.prevRev <= asOf) return s.prev;
    return undefined;
  }
}

/** A change the table's store still holds, for `entryAsOf`. */
export type RetainedChange = Omit<ReferenceChange, "key">;

/**
 * The entry as of `asOf` from the changes of one key its store still holds, oldest first (at
 * least every one up to `asOf` and the first after it, if any): the entry, null when the key had
 * none, undefined when the store no longer holds that far back. The store keeps a key's newest
 * changes (its history limit drops the oldest first), so the last change held at or before
 * `asOf` is the one in force then. When none is held, the key had none only if the first held
 * change says it was new (`previous` 0) or the store holds every change ever made to the key
 * (`complete`: fewer than its history limit, and no purge dropped older ones).
 */
export function entryAsOf(
  retained: readonly RetainedChange[],
  asOf: number,
  complete = false,
): ReferenceEntry | null | undefined {
  let found: RetainedChange | undefined;
  for (const c of retained) {
    if (c.revision > asOf) break;
    found = c;
  }
  if (found) return found.deleted ? null : { value: deepFreeze(found.value), revision: found.revision };
  return retained.length > 0 && (complete || retained[0]!.previous === 0) ? null : undefined;
}

/** Why a table cannot be read: its bucket does not exist. */
export const noTableReason = (table: string, bucket: string): string =>
  `reference table "${table}" does not exist (no KV bucket ${bucket}): waiting for it (sluice ref load --table ${table} --file F)`;

/** Why a table cannot be read: its cache is still loading. */
export const loadingTableReason = (table: string): string =>
  `reference table "${table}" is loading into this worker's cache: waiting for it`;

/** Why a lookup cannot be answered at all. */
export const historyGoneReason = (table: string, key: string, asOf: number): string =>
  `reference table "${table}": the entry for "${key}" as of revision ${asOf} is no longer known (the bucket keeps a few versions per key; the shard's pinned revision is older): the batch is retried`;
