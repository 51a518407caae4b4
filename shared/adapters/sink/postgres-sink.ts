/**
 * The PostgreSQL sink: workers write straight to the database through a pool of their own (no
 * sink process in between). Exactly-once rests on transactions in which the sink rules of
 * `core/sink-rules.ts` run against these tables: one per fence, and one per group of commits,
 * in which every shard's commit is checked and applied as if alone (see `commit`):
 *
 * - `sluice_checkpoints (pipeline, shard, epoch, seq, fingerprint, state, updated_at)`: one row per
 *   shard, locked `FOR UPDATE` by every fence and commit of the shard, so a fence and a zombie's
 *   commit are serialised and the zombie's finds the higher epoch;
 * - one table per pipeline: `append` mode (the default, the demo's) keeps every row, with an
 *   identity `row_id` giving the commit order and no unique key that could hide a duplicate;
 *   `upsert` mode keeps one row per key, the newest by `version` (the record's source sequence
 *   within its shard): a batch is collapsed by key first (PostgreSQL refuses to touch a row twice
 *   in one statement) and applied in key order, so two transactions lock rows in the same order
 *   and never deadlock, and `WHERE stored.version < incoming.version` keeps an older record from
 *   overwriting a newer one on a redelivery or a replay.
 *
 * Rows go in with one set-based statement per table and transaction (`INSERT … SELECT FROM
 * jsonb_to_recordset(…)`, every row in one JSON array; a transaction whose rows' text passes
 * `maxStatementChars` takes several), never one per record. A statement that fails for a
 * reason a retry can cure (the server restarting, a killed connection, a statement timeout, a
 * serialisation failure) surfaces as `UNAVAILABLE`, retryable; the pipeline retries the commit
 * (see `BatchCommitter`) and the shard stalls rather than skips.
 */
import pg, { type Pool, type PoolClient, type QueryResultRow } from "pg";
import { payloadJson } from "../../contract/codec.js";
import { ErrorCode, isSluiceError, SluiceError } from "../../contract/errors.js";
import type { ShardRef } from "../../contract/ownership.js";
import type {
  Checkpoint,
  CommitOptions,
  CommitResult,
  MergeApply,
  Sink,
  SinkRow,
} from "../../contract/ports.js";
import { takeGroup, type WaitingCommit } from "../../core/commit-group.js";
import { collapseForMerge } from "../../core/merge-policy.js";
import {
  type AsyncSinkTransaction,
  applyCommitAsync,
  applyFenceAsync,
  dedupeExpiry,
  dedupeRows,
} from "../../core/sink-rules.js";
import {
  checkpointOf,
  collapseByKey,
  lateAsMergeRows,
  type MergeBranches,
  type PendingLate,
  quoteIdent,
  type ReconcileReport,
  sideOutputTable,
  type TableMode,
} from "./sink-tables.js";

export interface PostgresSinkOptions {
  /** Pipelines whose tables are created on open, and how each keeps its rows. */
  pipelines: ReadonlyArray<{ name: string; mode?: TableMode }>;
  /** Wall clock for `committed_at` and `updated_at`, ms. */
  now?: () => number;
  /** Longest a statement may run, ms (`SET LOCAL statement_timeout`). */
  statementTimeoutMs?: number;
  /**
   * Longest the server waits for this writer's next statement inside a transaction, ms
   * (`SET LOCAL idle_in_transaction_session_timeout`): a worker frozen mid-transaction would
   * otherwise hold its shard's checkpoint row lock, and the shard's next owner would wait on it
   * for as long as the freeze lasts. The server ends such a session; the zombie's commit fails.
   */
  idleInTransactionTimeoutMs?: number;
  /**
   * Most characters of row text one insert statement carries (default `MAX_STATEMENT_CHARS`);
   * a transaction with more rows' text splits them over several statements, in order.
   */
  maxStatementChars?: number;
}

/**
 * Most characters of JSON row text in one insert statement: well below PostgreSQL's limit on
 * one `jsonb` value (255 MiB, a character taking up to 3 bytes) and V8's on one string (2^29
 * characters), which a group of large records (up to `GROUP_MAX_ROWS` of up to NATS's payload
 * limit) could otherwise pass.
 */
export const MAX_STATEMENT_CHARS = 32 * 1024 * 1024;

/** SQLSTATE classes and codes a retry can cure: connection loss, shutdown, timeouts, conflicts. */
const RETRYABLE_STATES = new Set(["40001", "40P01", "57014", "57P01", "57P02", "57P03", "55P03", "53300"]);
const RETRYABLE_CLASSES = ["08"];
const RETRYABLE_NODE = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "EPIPE",
  "ETIMEDOUT",
  "ENOTFOUND",
  "EAI_AGAIN",
]);

/** Whether a `pg` error is worth retrying (the database or the connection, not the statement). */
export function retryablePgError(err: unknown): boolean {
  const e = err as { code?: string; message?: string };
  if (typeof e?.code === "string") {
    if (RETRYABLE_STATES.has(e.code) || RETRYABLE_CLASSES.some((c) => e.code!.startsWith(c))) return true;
    if (RETRYABLE_NODE.has(e.code)) return true;
  }
  const m = e?.message ?? "";
  return /Connection terminated|connection lost|terminating connection|Client has encountered a connection error|timeout exceeded when trying to connect|the database system is (starting up|shutting down)/i.test(
    m,
  );
}

/** A `pg` error as a sluice error: retryable when the database or connection failed. */
export function pgError(what: string, err: unknown): SluiceError {
  if (err instanceof SluiceError) return err;
  const retryable = retryablePgError(err);
  return new SluiceError(ErrorCode.Unavailable, `postgres ${what}: ${(err as Error).message}`, {
    retryable,
    cause: err,
  });
}

/**
 * One transaction on one connection, in as few round trips as the sink rules allow: `BEGIN`
 * (with its timeouts) goes out with the checkpoints' `SELECT … FOR UPDATE`, the rows in one
 * prepared statement per table, and the checkpoints' writes with `COMMIT`: three round trips
 * per group of commits.
 * Statements sent as simple queries carry only literals made by `literal` and `int`.
 */
class PgTransaction {
  begun = false;
  private atCommit: string | null = null;

  constructor(
    readonly client: PoolClient,
    private readonly beginSql: string,
  ) {}

  /** Runs literal SQL (after `BEGIN` when not yet sent); the last statement's rows. */
  async simple<R extends QueryResultRow>(sql: string): Promise<R[]> {
    const text = this.begun ? sql : `${this.beginSql}; ${sql}`;
    this.begun = true;
    const r = (await this.client.query<R>(text)) as unknown as pg.QueryResult<R> | pg.QueryResult<R>[];
    return Array.isArray(r) ? (r[r.length - 1]?.rows ?? []) : r.rows;
  }

  async ensureBegun(): Promise<void> {
    if (!this.begun) await this.simple("SELECT 1");
  }

  /** A statement whose result nothing reads: sent with `COMMIT`. */
  beforeCommit(sql: string): void {
    this.atCommit = this.atCommit === null ? sql : `${this.atCommit}; ${sql}`;
  }

  async commit(): Promise<void> {
    if (!this.begun && this.atCommit === null) return;
    await this.simple(this.atCommit === null ? "COMMIT" : `${this.atCommit}; COMMIT`);
  }
}

/** A text literal for a simple query. */
const literal = (v: string): string => pg.escapeLiteral(v);

/** An integer literal for a simple query; anything else is a bug, not data. */
function int(v: number): string {
  if (!Number.isSafeInteger(v)) throw new TypeError(`not an integer: ${v}`);
  return String(v);
}

/** Prepared statements' names by text: each connection parses and plans a statement once. */
const statementNames = new Map<string, string>();
function statementName(text: string): string {
  let name = statementNames.get(text);
  if (name === undefined) {
    name = `sluice_${statementNames.size + 1}`;
    statementNames.set(text, name);
  }
  return name;
}

/**
 * Transactions of group commits a sink runs at once. One: while it commits, the next group
 * gathers every shard that finished its batch meanwhile, so groups grow with the load, and a
 * worker keeps one PostgreSQL backend busy, whose cost per row rises with the number of
 * concurrent committers (two at a time measured 15–25 % slower end to end; docs/performance.md).
 */
const COMMIT_GROUPS = 1;

type GroupOutcome = { ok: true; result: CommitResult } | { ok: false; error: unknown };

const shardKey = (r: { pipeline: string; shard: number }): string => `${r.pipeline}\u0000${r.shard}`;

export class PostgresSink implements Sink {
  private readonly now: () => number;
  private readonly modes = new Map<string, TableMode>();
  private readonly created = new Set<string>();
  private ready: Promise<void> | null = null;
  /** `BEGIN` and the transaction's timeouts, sent as one simple query: one round trip. */
  private readonly begin: string;
  private closed = false;
  /** Commits waiting for a transaction (see `commit`), oldest first. */
  private waiting: WaitingCommit[] = [];
  private groupsRunning = 0;

  constructor(
    private readonly pool: Pool,
    private readonly opts: PostgresSinkOptions,
  ) {
    this.now = opts.now ?? Date.now;
    for (const p of opts.pipelines) this.modes.set(p.name, p.mode ?? "append");
    const ms = (v: number): number => Math.max(1, Math.round(v));
    this.begin = [
      "BEGIN",
      ...(opts.statementTimeoutMs ? [`SET LOCAL statement_timeout = ${ms(opts.statementTimeoutMs)}`] : []),
      ...(opts.idleInTransactionTimeoutMs
        ? [`SET LOCAL idle_in_transaction_session_timeout = ${ms(opts.idleInTransactionTimeoutMs)}`]
        : []),
    ].join("; ");
  }

  /** Creates the checkpoint table and the pipelines' tables (idempotent; once per sink). */
  init(): Promise<void> {
    this.ready ??= (async () => {
      await this.pool.query(CHECKPOINTS_DDL);
      for (const ddl of [...DEDUPE_DDL, ...BATCHES_DDL, ...LATE_DDL]) await this.pool.query(ddl);
      // Checked first: the ALTER takes the table's exclusive lock even when the column exists.
      const cols = await this.pool.query(
        "SELECT 1 FROM information_schema.columns WHERE table_name = 'sluice_checkpoints' AND column_name = 'state' AND table_schema = current_schema()",
      );
      if (cols.rowCount === 0) await this.pool.query(CHECKPOINTS_STATE);
      for (const p of this.opts.pipelines) await this.ensureTable(p.name);
    })().catch((err: unknown) => {
      this.ready = null;
      throw pgError("schema", err);
    });
    return this.ready;
  }

  private async ensureTable(table: string, pipeline = table): Promise<void> {
    if (this.created.has(table)) return;
    const mode = this.modes.get(pipeline) ?? "append";
    for (const stmt of pipelineTableDdl(table, mode)) await this.pool.query(stmt);
    this.created.add(table);
  }

  /**
   * Applies the rows bound for a merge to its table (`MergeApply`): collapsed to the highest
   * per key and applied in key order in one statement, each replacing the key's row only if it
   * ranks higher, so two branches' transactions lock keys in the same order and never deadlock.
   */
  private async applyMerges(
    c: PoolClient,
    ref: ShardRef,
    at: number,
    rows: readonly SinkRow[],
  ): Promise<void> {
    const byMerge = new Map<string, Array<SinkRow & { merge: MergeApply }>>();
    for (const r of rows) {
      if (r.merge === undefined || r.output !== undefined) continue;
      const k = `${r.merge.into}\u0000${r.merge.policy}`;
      let list = byMerge.get(k);
      if (!list) {
        list = [];
        byMerge.set(k, list);
      }
      list.push(r as SinkRow & { merge: MergeApply });
    }
    for (const list of byMerge.values()) {
      const { into, policy } = list[0]!.merge;
      if (!this.created.has(into)) {
        await this.pool.query(postgresMergeTableDdl(into));
        this.created.add(into);
      }
      const best = collapseForMerge(
        policy,
        list.map((r) => ({
          key: r.key,
          recordId: r.recordId,
          eventTime: r.merge.eventTime,
          priority: r.merge.priority,
          r,
        })),
      ).map((x) => x.r);
      const t = quoteIdent(into);
      const rank = (x: string) =>
        policy === "latest"
          ? `(${x}.event_time, ${x}.priority, ${x}.record_id)`
          : `(${x}.priority, ${x}.event_time, ${x}.record_id)`;
      const text = `INSERT INTO ${t} (key, record_id, pipeline, shard, source_seq, event_time, priority, payload, updated_at)
        SELECT k, r, $1, $2, s, e, p, d::jsonb, $3
        FROM unnest($4::text[], $5::text[], $6::bigint[], $7::bigint[], $8::integer[], $9::text[]) WITH ORDINALITY AS u(k, r, s, e, p, d, o)
        ORDER BY o
        ON CONFLICT (key) DO UPDATE SET record_id = EXCLUDED.record_id, pipeline = EXCLUDED.pipeline,
          shard = EXCLUDED.shard, source_seq = EXCLUDED.source_seq, event_time = EXCLUDED.event_time,
          priority = EXCLUDED.priority, payload = EXCLUDED.payload, updated_at = EXCLUDED.updated_at
        WHERE ${rank("EXCLUDED")} > ${rank(t)}`;
      await c.query({
        name: statementName(text),
        text,
        values: [
          ref.pipeline,
          ref.shard,
          at,
          best.map((r) => r.key),
          best.map((r) => r.recordId),
          best.map((r) => r.sourceSeq),
          best.map((r) => r.merge.eventTime),
          best.map((r) => r.merge.priority),
          best.map((r) => payloadJson(r.value)),
        ],
      });
    }
  }

  private assertOpen(): void {
    if (this.closed) throw new SluiceError(ErrorCode.Unavailable, "sink is closed", { retryable: false });
  }

  /**
   * Runs `fn` in one transaction on a pooled connection; rolls back on any failure. `prelude`
   * (literal SQL) goes out with `BEGIN`, before the transaction's first statement.
   */
  private async tx<T>(what: string, fn: (t: PgTransaction) => Promise<T>, prelude = ""): Promise<T> {
    this.assertOpen();
    await this.init();
    let client: PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw pgError(`${what}: connect`, err);
    }
    let broken = false;
    // A checked-out connection has no pool listener: a server shutdown or a killed backend
    // emits 'error' on it, which would crash the process. The failing query rejects too; the
    // listener only marks the connection so it is not returned to the pool.
    const onError = (): void => {
      broken = true;
    };
    client.on("error", onError);
    const t = new PgTransaction(client, prelude ? `${this.begin}; ${prelude}` : this.begin);
    try {
      const out = await fn(t);
      await t.commit();
      return out;
    } catch (err) {
      broken = retryablePgError(err);
      if (t.begun) {
        await client.query("ROLLBACK").catch(() => {
          broken = true;
        });
      }
      throw pgError(what, err);
    } finally {
      // A connection that failed mid-transaction is dropped, not returned to the pool.
      client.off("error", onError);
      client.release(broken);
    }
  }

  /**
   * This database's storage for the sink rules, on one transaction. With `locked`, the
   * checkpoints were read and locked already (`applyGroup`). Rows for the pipelines' tables are
   * gathered in `inserts` and go in at the end of the transaction (`insertGathered`); `broken`
   * hears of any statement that failed, which aborts the whole transaction.
   */
  private storage(
    t: PgTransaction,
    inserts: GatheredRows,
    locked?: ReadonlyMap<string, Checkpoint>,
    broken?: (err: unknown) => void,
  ): AsyncSinkTransaction<SinkRow> {
    const sql = async <T>(run: () => Promise<T>): Promise<T> => {
      try {
        return await run();
      } catch (err) {
        broken?.(err);
        throw err;
      }
    };
    return {
      readCheckpoint: async (ref) => {
        if (locked) return locked.get(shardKey(ref)) ?? { epoch: 0, seq: 0 };
        const rows = await t.simple<CheckpointRow>(
          `SELECT epoch, seq, fingerprint, state FROM sluice_checkpoints WHERE pipeline = ${literal(ref.pipeline)} AND shard = ${int(ref.shard)} FOR UPDATE`,
        );
        const row = rows[0];
        if (!row) return { epoch: 0, seq: 0 };
        return checkpointOf(row);
      },
      writeRows: (ref, epoch, worker, rows) =>
        sql(async () => {
          await t.ensureBegun();
          await this.writeRows(t.client, ref, epoch, worker, rows, inserts);
        }),
      dedupe: (ref, rows, windowMs) =>
        sql(async () => {
          await t.ensureBegun();
          return dedupeInPostgres(t.client, ref.pipeline, rows, windowMs);
        }),
      writeBatch: async (ref, b) => {
        // Sent with COMMIT, like the checkpoint.
        t.beforeCommit(
          `INSERT INTO sluice_batches (pipeline, shard, epoch, worker, first_seq, last_seq, rows_written,
             late, dead_lettered, deduplicated, config_revision, committed_at)
           VALUES (${literal(ref.pipeline)}, ${int(ref.shard)}, ${int(b.epoch)}, ${literal(b.worker)}, ${int(b.firstSeq)}, ${int(b.lastSeq)}, ${int(b.rows)}, ${int(b.late)}, ${int(b.deadLettered)}, ${int(b.deduplicated)}, ${literal(b.configRevision)}, ${int(this.now())})`,
        );
      },
      writeCheckpoint: async (ref, cp) => {
        // Sent with COMMIT: nothing in the transaction reads it back.
        t.beforeCommit(
          `INSERT INTO sluice_checkpoints (pipeline, shard, epoch, seq, fingerprint, state, updated_at)
           VALUES (${literal(ref.pipeline)}, ${int(ref.shard)}, ${int(cp.epoch)}, ${int(cp.seq)}, ${cp.fingerprint === undefined ? "NULL" : literal(cp.fingerprint)}, ${cp.state === undefined ? "NULL" : literal(JSON.stringify(cp.state))}, ${int(this.now())})
           ON CONFLICT (pipeline, shard) DO UPDATE SET epoch = EXCLUDED.epoch, seq = EXCLUDED.seq,
             fingerprint = EXCLUDED.fingerprint, state = EXCLUDED.state, updated_at = EXCLUDED.updated_at`,
        );
      },
    };
  }

  /**
   * A commit's rows: those for the pipelines' tables are gathered in `inserts` (one statement
   * per table at the end of the transaction, for every shard in it); late records and merges
   * are written at once.
   */
  private async writeRows(
    c: PoolClient,
    ref: ShardRef,
    epoch: number,
    worker: string,
    rows: readonly SinkRow[],
    inserts: GatheredRows,
  ): Promise<void> {
    const mode = this.modes.get(ref.pipeline) ?? "append";
    for (const r of rows) {
      const table = r.output === undefined ? ref.pipeline : sideOutputTable(ref.pipeline, r.output);
      // A side output's table is made on its first row (outside this transaction's locks).
      if (!this.created.has(table)) await this.ensureTable(table, ref.pipeline);
      let g = inserts.get(table);
      if (!g) {
        g = { mode, rows: [] };
        inserts.set(table, g);
      }
      g.rows.push({ r, key: r.key, sourceSeq: r.sourceSeq, shard: ref.shard, epoch, worker });
    }
    const at = this.now();
    await insertLate(c, ref, at, rows);
    await this.applyMerges(c, ref, at, rows);
  }

  async fence(ref: ShardRef, epoch: number): Promise<Checkpoint> {
    // The shard's row exists before it is locked, so two first fences serialise on it too.
    const prelude = `INSERT INTO sluice_checkpoints (pipeline, shard, epoch, seq, fingerprint, updated_at)
       VALUES (${literal(ref.pipeline)}, ${int(ref.shard)}, 0, 0, NULL, ${int(this.now())}) ON CONFLICT (pipeline, shard) DO NOTHING`;
    return this.tx("fence", (t) => applyFenceAsync(this.storage(t, new Map()), ref, epoch), prelude);
  }

  /**
   * Commits one shard's batch in a transaction it may share with other shards' commits of this
   * worker (group commit): a commit that arrives while `COMMIT_GROUPS` transactions are running
   * waits, and the next transaction takes every commit waiting then. Each shard still gets
   * exactly its own transaction's guarantees: its checkpoint row is locked (all of them in
   * shard order, so two groups never deadlock), its epoch checked and its checkpoint moved with
   * its rows, atomically; a fenced shard is refused alone and the others commit. A keeping-up
   * worker's shards each bring a few dozen records per commit; together they make one
   * transaction of a few hundred, which costs the database and the client about half as much
   * per row (docs/performance.md).
   */
  async commit(
    ref: ShardRef,
    epoch: number,
    worker: string,
    rows: SinkRow[],
    lastSeq: number,
    opts: CommitOptions = {},
  ): Promise<CommitResult> {
    this.assertOpen();
    return new Promise<CommitResult>((resolve, reject) => {
      this.waiting.push({ ref, epoch, worker, rows, lastSeq, opts, resolve, reject });
      this.startGroups();
    });
  }

  private startGroups(): void {
    while (this.groupsRunning < COMMIT_GROUPS && this.waiting.length > 0) {
      const group = takeGroup(this.waiting);
      this.groupsRunning++;
      // The next group starts a turn of the event loop later: the shards this one answered
      // pull and stage their next batch meanwhile and join it, rather than wait a whole
      // transaction for the one after.
      void this.runGroup(group).finally(() =>
        setImmediate(() => {
          this.groupsRunning--;
          this.startGroups();
        }),
      );
    }
  }

  /**
   * One transaction for `group`. When it fails as a whole for a reason a retry cannot cure (a
   * statement one shard's rows made fail), each commit is tried alone, so only that shard's
   * fails; a retryable failure goes back to every commit, and each pipeline retries its own.
   */
  private async runGroup(group: WaitingCommit[]): Promise<void> {
    let outcomes: GroupOutcome[];
    try {
      outcomes = await this.tx("commit", (t) => this.applyGroup(t, group));
    } catch (err) {
      if (group.length > 1 && !(isSluiceError(err) && err.retryable)) {
        for (const q of group) await this.runGroup([q]);
        return;
      }
      for (const q of group) q.reject(err);
      return;
    }
    group.forEach((q, i) => {
      const o = outcomes[i]!;
      if (o.ok) q.resolve(o.result);
      else q.reject(o.error);
    });
  }

  /**
   * The sink rules for each commit of `group`, after its checkpoint rows were locked in one
   * statement (with `BEGIN`, in shard order); the rows of all of them go in with one statement
   * per table, the checkpoints with `COMMIT`: three round trips for the whole group. A commit
   * the rules refuse (fenced) is that commit's outcome; a failed statement ends the transaction.
   */
  private async applyGroup(t: PgTransaction, group: readonly WaitingCommit[]): Promise<GroupOutcome[]> {
    const refs = [...new Map(group.map((q) => [shardKey(q.ref), q.ref])).values()];
    const list = refs.map((r) => `(${literal(r.pipeline)}, ${int(r.shard)})`).join(", ");
    const locked = new Map<string, Checkpoint>();
    for (const row of await t.simple<CheckpointRow & { pipeline: string; shard: number }>(
      `SELECT pipeline, shard, epoch, seq, fingerprint, state FROM sluice_checkpoints
       WHERE (pipeline, shard) IN (${list}) ORDER BY pipeline, shard FOR UPDATE`,
    ))
      locked.set(shardKey(row), checkpointOf(row));
    const inserts: GatheredRows = new Map();
    let failed: { err: unknown } | null = null;
    const store = this.storage(t, inserts, locked, (err) => {
      failed ??= { err };
    });
    const out: GroupOutcome[] = [];
    for (const q of group) {
      try {
        out.push({
          ok: true,
          result: await applyCommitAsync(store, q.ref, q.epoch, q.worker, q.rows, q.lastSeq, q.opts),
        });
      } catch (error) {
        if (failed) throw (failed as { err: unknown }).err;
        out.push({ ok: false, error });
      }
    }
    await insertGathered(t.client, inserts, this.now(), this.opts.maxStatementChars ?? MAX_STATEMENT_CHARS);
    return out;
  }

  /** See `SqliteSink.reconcileLate`: the pending late rows are locked first (`FOR UPDATE`). */
  async reconcileLate(m: MergeBranches): Promise<ReconcileReport> {
    return this.tx("reconcile late records", async (t) => {
      await t.ensureBegun();
      let reconciled = 0;
      const at = this.now();
      for (const b of m.branches) {
        await this.ensureTable(b.pipeline);
        const pending = (
          await t.client.query<PendingLate>(
            `SELECT l.shard, l.source_seq, l.record_id, l.event_time, r.key, r.payload
             FROM sluice_late l JOIN ${quoteIdent(b.pipeline)} r
               ON r.shard = l.shard AND r.source_seq = l.source_seq AND r.record_id = l.record_id
             WHERE l.pipeline = $1 AND NOT l.reconciled ORDER BY l.shard, l.source_seq FOR UPDATE OF l`,
            [b.pipeline],
          )
        ).rows;
        for (const [shard, rows] of lateAsMergeRows(m, b.priority, pending))
          await this.applyMerges(t.client, { pipeline: b.pipeline, shard }, at, rows);
        // Only the rows read and locked: a late record a commit adds meanwhile stays pending.
        await t.client.query(
          `UPDATE sluice_late l SET reconciled = true FROM unnest($2::integer[], $3::bigint[]) AS u(shard, seq)
           WHERE l.pipeline = $1 AND l.shard = u.shard AND l.source_seq = u.seq AND NOT l.reconciled`,
          [b.pipeline, pending.map((l) => l.shard), pending.map((l) => Number(l.source_seq))],
        );
        reconciled += pending.length;
      }
      return { merge: m.merge, reconciled };
    });
  }

  async checkpoint(ref: ShardRef): Promise<Checkpoint> {
    this.assertOpen();
    await this.init();
    try {
      const r = await this.pool.query<CheckpointRow>(
        "SELECT epoch, seq, fingerprint, state FROM sluice_checkpoints WHERE pipeline = $1 AND shard = $2",
        [ref.pipeline, ref.shard],
      );
      return r.rows[0] ? checkpointOf(r.rows[0]) : { epoch: 0, seq: 0 };
    } catch (err) {
      throw pgError("checkpoint", err);
    }
  }

  async recordIds(ref: ShardRef, fromSeq: number): Promise<string[]> {
    this.assertOpen();
    await this.init();
    await this.ensureTable(ref.pipeline);
    try {
      const r = await this.pool.query<{ record_id: string }>(
        `SELECT record_id FROM ${quoteIdent(ref.pipeline)} WHERE shard = $1 AND source_seq >= $2`,
        [ref.shard, fromSeq],
      );
      return r.rows.map((x) => x.record_id);
    } catch (err) {
      throw pgError("record ids", err);
    }
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

/** Business keys committed within a pipeline's dedupe window (`dedupeInPostgres`). */
const DEDUPE_DDL = [
  `CREATE TABLE IF NOT EXISTS sluice_dedupe (
    pipeline text NOT NULL, dkey text NOT NULL, seen_ms bigint NOT NULL, PRIMARY KEY (pipeline, dkey))`,
  "CREATE INDEX IF NOT EXISTS sluice_dedupe_seen ON sluice_dedupe (pipeline, seen_ms)",
];

/**
 * The dedupe decision inside a commit's transaction (`dedupeRows` decides; this reads and writes
 * the marks). A key no mark holds yet is claimed first, in key order, with `INSERT … ON CONFLICT
 * DO NOTHING`: a second transaction claiming the same key (a record of another shard with the
 * same business key) waits on the key's index entry until the first ends, then finds its mark,
 * so two shards never both keep a key. Marks already there are read `FOR UPDATE`; the kept keys'
 * marks are moved to their newest time, and marks the window has left behind are removed.
 */
async function dedupeInPostgres(
  c: PoolClient,
  pipeline: string,
  rows: readonly SinkRow[],
  windowMs: number,
): Promise<SinkRow[]> {
  const first = new Map<string, number>();
  for (const r of rows) if (r.dedupe && !first.has(r.dedupe.key)) first.set(r.dedupe.key, r.dedupe.at);
  const keys = [...first.keys()].sort();
  const claimed = new Set(
    (
      await c.query<{ dkey: string }>(
        `INSERT INTO sluice_dedupe (pipeline, dkey, seen_ms)
         SELECT $1, k, t FROM unnest($2::text[], $3::bigint[]) AS u(k, t) ORDER BY k
         ON CONFLICT (pipeline, dkey) DO NOTHING RETURNING dkey`,
        [pipeline, keys, keys.map((k) => first.get(k)!)],
      )
    ).rows.map((r) => r.dkey),
  );
  const others = keys.filter((k) => !claimed.has(k));
  const existing = new Map<string, number>();
  if (others.length > 0) {
    const r = await c.query<{ dkey: string; seen_ms: string }>(
      "SELECT dkey, seen_ms FROM sluice_dedupe WHERE pipeline = $1 AND dkey = ANY($2::text[]) ORDER BY dkey FOR UPDATE",
      [pipeline, others],
    );
    for (const x of r.rows) existing.set(x.dkey, Number(x.seen_ms));
  }
  const marks = new Map<string, number>();
  const keep = dedupeRows(
    rows,
    windowMs,
    (k) => existing.get(k),
    (k, at) => marks.set(k, at),
  );
  if (marks.size > 0) {
    await c.query(
      `UPDATE sluice_dedupe d SET seen_ms = u.t FROM unnest($2::text[], $3::bigint[]) AS u(k, t)
       WHERE d.pipeline = $1 AND d.dkey = u.k`,
      [pipeline, [...marks.keys()], [...marks.values()]],
    );
  }
  await c.query("DELETE FROM sluice_dedupe WHERE pipeline = $1 AND seen_ms < $2", [
    pipeline,
    Math.floor(dedupeExpiry(rows, windowMs)),
  ]);
  return keep;
}

/**
 * A merge's table (see the SQLite sink's). Key and record id compare byte by byte (`COLLATE
 * "C"`), as the policy's order and the key order of its statements need.
 */
export const postgresMergeTableDdl = (
  table: string,
): string => `CREATE TABLE IF NOT EXISTS ${quoteIdent(table)} (
  key text COLLATE "C" PRIMARY KEY, record_id text COLLATE "C" NOT NULL, pipeline text NOT NULL,
  shard integer NOT NULL, source_seq bigint NOT NULL, event_time bigint NOT NULL,
  priority integer NOT NULL, payload jsonb NOT NULL, updated_at bigint NOT NULL)`;

/** The late table (see the SQLite sink's): one row per record committed late by its event time. */
const LATE_DDL = [
  `CREATE TABLE IF NOT EXISTS sluice_late (
    pipeline text NOT NULL, shard integer NOT NULL, source_seq bigint NOT NULL, record_id text NOT NULL,
    event_time bigint NOT NULL, watermark bigint NOT NULL, reconciled boolean NOT NULL DEFAULT false,
    committed_at bigint NOT NULL)`,
  "CREATE INDEX IF NOT EXISTS sluice_late_pending ON sluice_late (pipeline, reconciled, shard, source_seq)",
];

/** The audit table (see the SQLite sink's): one row per commit that took in records. */
const BATCHES_DDL = [
  `CREATE TABLE IF NOT EXISTS sluice_batches (
    batch_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, pipeline text NOT NULL,
    shard integer NOT NULL, epoch bigint NOT NULL, worker text NOT NULL, first_seq bigint NOT NULL,
    last_seq bigint NOT NULL, rows_written integer NOT NULL, late integer NOT NULL,
    dead_lettered integer NOT NULL, deduplicated integer NOT NULL, config_revision text NOT NULL,
    committed_at bigint NOT NULL)`,
  "CREATE INDEX IF NOT EXISTS sluice_batches_shard_seq ON sluice_batches (pipeline, shard, last_seq)",
];

const CHECKPOINTS_DDL = `CREATE TABLE IF NOT EXISTS sluice_checkpoints (
  pipeline text NOT NULL, shard integer NOT NULL, epoch bigint NOT NULL, seq bigint NOT NULL,
  fingerprint text, state text, updated_at bigint NOT NULL, PRIMARY KEY (pipeline, shard))`;
/** A database made before checkpoints carried the stages' pinned state. */
const CHECKPOINTS_STATE = "ALTER TABLE sluice_checkpoints ADD COLUMN IF NOT EXISTS state text";

type CheckpointRow = { epoch: string; seq: string; fingerprint: string | null; state: string | null };

/**
 * A pipeline's table. Both modes have the SQLite table's columns (`payload` as `jsonb`) and
 * the `(shard, source_seq)` index; append adds an identity `row_id` (commit order), upsert a
 * `version` and the key as primary key.
 */
export function pipelineTableDdl(table: string, mode: TableMode): string[] {
  const t = quoteIdent(table);
  const cols = `record_id text NOT NULL, key text NOT NULL, shard integer NOT NULL,
    source_seq bigint NOT NULL, epoch bigint NOT NULL, worker text NOT NULL, payload jsonb NOT NULL,
    committed_at bigint NOT NULL, lineage jsonb, late boolean NOT NULL DEFAULT false`;
  // A table made before rows carried lineage or a late flag gets the columns; checked first, since
  // the ALTER takes the table's exclusive lock even when the column exists.
  const addLineage = `DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name = ${pg.escapeLiteral(table)} AND column_name = 'lineage')
    THEN ALTER TABLE ${t} ADD COLUMN lineage jsonb; END IF;
    IF NOT EXISTS (SELECT 1 FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name = ${pg.escapeLiteral(table)} AND column_name = 'late')
    THEN ALTER TABLE ${t} ADD COLUMN late boolean NOT NULL DEFAULT false; END IF; END $$`;
  return [
    mode === "upsert"
      ? `CREATE TABLE IF NOT EXISTS ${t} (row_id bigint GENERATED ALWAYS AS IDENTITY, ${cols}, version bigint NOT NULL, PRIMARY KEY (key))`
      : `CREATE TABLE IF NOT EXISTS ${t} (row_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, ${cols})`,
    `CREATE INDEX IF NOT EXISTS ${quoteIdent(`${table}_shard_seq`)} ON ${t} (shard, source_seq)`,
    addLineage,
  ];
}

/** One row for a pipeline's table, with the commit it came in (`GatheredRows`). */
interface TableRow {
  r: SinkRow;
  key: string;
  sourceSeq: number;
  shard: number;
  epoch: number;
  worker: string;
}

/** A transaction's rows for the pipelines' tables, by table, in the order the commits gave them. */
type GatheredRows = Map<string, { mode: TableMode; rows: TableRow[] }>;

/** Every gathered row, one statement per table (more where its text passes `maxChars`). */
async function insertGathered(
  c: PoolClient,
  inserts: GatheredRows,
  at: number,
  maxChars: number,
): Promise<void> {
  for (const [table, g] of inserts) await insertRows(c, g.mode, table, at, g.rows, maxChars);
}

/**
 * Every row in one statement, sent as one JSON array (`jsonb_to_recordset`) and inserted in the
 * order given: the client joins each row's JSON text once, where column arrays would be escaped
 * element by element into array literals. The array is parsed as `jsonb`: `json_to_recordset`
 * re-parses each row's payload into the `jsonb` column and, measured on this database, cost up
 * to 1.8x the backend CPU per row (docs/performance.md). Rows whose text passes `maxChars` go in
 * several statements, in order. Upsert mode first collapses the rows by key (newest wins) in
 * key order, so a statement touches each row once and two transactions lock keys in the same
 * order; a stored row is replaced only by a newer version. A key belongs to one shard, so rows
 * of several shards collapse the same way.
 */
async function insertRows(
  c: PoolClient,
  mode: TableMode,
  table: string,
  at: number,
  rows: readonly TableRow[],
  maxChars: number,
): Promise<void> {
  const t = quoteIdent(table);
  const upsert = mode === "upsert";
  const list = upsert ? collapseByKey(rows) : rows;
  const text = `INSERT INTO ${t} (record_id, key, shard, source_seq, epoch, worker, payload, committed_at, lineage, late${upsert ? ", version" : ""})
     SELECT r, k, sh, s, e, w, p, $1, l, lt${upsert ? ", s" : ""}
     FROM ROWS FROM (jsonb_to_recordset($2::jsonb) AS (r text, k text, sh integer, s bigint, e bigint, w text, lt boolean, p jsonb, l jsonb))
       WITH ORDINALITY AS u(r, k, sh, s, e, w, lt, p, l, o) ORDER BY o
     ${
       upsert
         ? `ON CONFLICT (key) DO UPDATE SET record_id = EXCLUDED.record_id, shard = EXCLUDED.shard,
       source_seq = EXCLUDED.source_seq, epoch = EXCLUDED.epoch, worker = EXCLUDED.worker,
       payload = EXCLUDED.payload, committed_at = EXCLUDED.committed_at, version = EXCLUDED.version,
       late = EXCLUDED.late, lineage = EXCLUDED.lineage
     WHERE ${t}.version < EXCLUDED.version`
         : ""
     }`;
  const name = statementName(text);
  let parts: string[] = [];
  let chars = 0;
  const flush = async (): Promise<void> => {
    await c.query({ name, text, values: [at, `[${parts.join(",")}]`] });
    parts = [];
    chars = 0;
  };
  for (const x of list) {
    const lineage = x.r.lineage === undefined ? "" : `,"l":${JSON.stringify(x.r.lineage)}`;
    const part = `{"r":${JSON.stringify(x.r.recordId)},"k":${JSON.stringify(x.key)},"sh":${int(x.shard)},"s":${int(x.sourceSeq)},"e":${int(x.epoch)},"w":${JSON.stringify(x.worker)},"lt":${x.r.late !== undefined},"p":${payloadJson(x.r.value)}${lineage}}`;
    if (parts.length > 0 && chars + part.length > maxChars) await flush();
    parts.push(part);
    chars += part.length + 1;
  }
  if (parts.length > 0) await flush();
}

/** Records `rows`' late ones in `sluice_late`, in the commit's transaction. */
async function insertLate(c: PoolClient, ref: ShardRef, at: number, rows: readonly SinkRow[]): Promise<void> {
  const late = rows.filter((r) => r.late !== undefined);
  if (late.length === 0) return;
  await c.query(
    `INSERT INTO sluice_late (pipeline, shard, source_seq, record_id, event_time, watermark, reconciled, committed_at)
     SELECT $1, $2, s, r, e, w, false, $3 FROM unnest($4::bigint[], $5::text[], $6::bigint[], $7::bigint[]) AS u(s, r, e, w)`,
    [
      ref.pipeline,
      ref.shard,
      at,
      late.map((r) => r.sourceSeq),
      late.map((r) => r.recordId),
      late.map((r) => r.late!.eventTime),
      late.map((r) => r.late!.watermark),
    ],
  );
}
