import { refBucket } from "../contract/wire.js";
import {
  entryAsOf,
  loadingTableReason,
  noTableReason,
  ReferenceCache,
  type ReferenceChange,
  type ReferenceEntry,
} from "../core/reference-cache.js";
import { CachedReferenceTable, type ReferenceTables } from "../pipeline/stages/enrich-stage.js";

export interface MemoryReferenceTablesOptions {
  /** Deliver changes only on `sync` (default: at once). */
  manual?: boolean;
  /** Changes kept per key for `resolve`, newest first (default: all), like a bucket's history. */
  history?: number;
}

interface Log {
  changes: ReferenceChange[];
  /** The table's next revision. */
  seq: number;
}

class MemoryReferenceTable extends CachedReferenceTable {
  /** Changes delivered to the cache so far (an index into the log). */
  private delivered = 0;

  constructor(
    name: string,
    private readonly log: () => Log | undefined,
    private readonly history: number,
  ) {
    super(name);
  }

  waiting(): string | null {
    if (this.cache) return null;
    return this.log() ? loadingTableReason(this.name) : noTableReason(this.name, refBucket(this.name));
  }

  async resolve(key: string, asOf: number): Promise<ReferenceEntry | null> {
    const all = (this.log()?.changes ?? []).filter((c) => c.key === key);
    const found = entryAsOf(all.slice(-this.history), asOf, all.length <= this.history);
    return found === undefined ? this.historyGone(key, asOf) : found;
  }

  /** Delivers what the log holds beyond what the cache has seen; the first call loads a snapshot. */
  sync(): void {
    const log = this.log();
    if (!log) return;
    if (!this.cache) {
      // The initial load: each key's last change, in revision order, none of them inferred.
      const cache = new ReferenceCache();
      const last = new Map<string, ReferenceChange>();
      for (const c of log.changes) last.set(c.key, c);
      for (const c of [...last.values()].sort((a, b) => a.revision - b.revision)) cache.apply(c, false);
      cache.advance(log.seq - 1);
      this.delivered = log.changes.length;
      this.install(cache);
      return;
    }
    for (; this.delivered < log.changes.length; this.delivered++) {
      const c = log.changes[this.delivered]!;
      this.cache.apply(c, true);
      this.cache.advance(c.revision);
    }
  }
}

export class MemoryReferenceTables implements ReferenceTables {
  private readonly logs = new Map<string, Log>();
  private readonly tables = new Map<string, MemoryReferenceTable>();

  constructor(private readonly opts: MemoryReferenceTablesOptions = {}) {}

  table(name: string): MemoryReferenceTable {
    let t = this.tables.get(name);
    if (!t) {
      t = new MemoryReferenceTable(
        name,
        () => this.logs.get(name),
        this.opts.history ?? Number.MAX_SAFE_INTEGER,
      );
      this.tables.set(name, t);
      if (!this.opts.manual) t.sync();
    }
    return t;
  }

  /** Makes the table's bucket (empty). */
  create(table: string): void {
    if (!this.logs.has(table)) this.logs.set(table, { changes: [], seq: 1 });
    if (!this.opts.manual) this.tables.get(table)?.sync();
  }

  /**
   * Writes `key`; returns its revision. `foreign`: the write does not name the key's previous
   * revision (a client other than `sluice ref`).
   */
  put(table: string, key: string, value: unknown, opts: { foreign?: boolean } = {}): number {
    return this.write(table, key, value, false, opts.foreign ?? false);
  }

  /** Deletes `key` (a delete marker); returns its revision. */
  delete(table: string, key: string, opts: { foreign?: boolean } = {}): number {
    return this.write(table, key, undefined, true, opts.foreign ?? true);
  }

  /** Delivers the pending changes of `table` to its cache (the first time: its initial load). */
  sync(table: string): void {
    this.table(table).sync();
  }

  private write(table: string, key: string, value: unknown, deleted: boolean, foreign: boolean): number {
    this.create(table);
    const log = this.logs.get(table)!;
    const revision = log.seq++;
    let previous = 0;
    for (const c of log.changes) if (c.key === key) previous = c.revision;
    // A deep copy: what the cache freezes is not the caller's object.
    const copy = deleted ? undefined : (JSON.parse(JSON.stringify(value)) as unknown);
    log.changes.push({ key, revision, value: copy, deleted, ...(foreign ? {} : { previous }) });
    if (!this.opts.manual) this.tables.get(table)?.sync();
    return revision;
  }
}
