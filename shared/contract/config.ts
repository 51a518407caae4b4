/**
 * Cluster configuration: pipelines and protocol timing. Validated with zod so a bad file
 * fails with a clear message instead of a crash deep inside a node. Reading a file is the
 * adapters' (`adapters/config-file.ts`); this is the schema and its checks.
 */
import { createHash } from "node:crypto";
import parseDuration from "parse-duration";
import { z } from "zod";
import { ErrorCode, SluiceError } from "./errors.js";

const name = z
  .string()
  .regex(/^[A-Za-z][A-Za-z0-9_]{0,62}$/, "letters, digits and _ only, starting with a letter");

/**
 * Where a pipeline's records are committed (each fenced and exactly-once, see README "Sinks"):
 * `sqlite`, the embedded default, owned by the sink process (`D/sink.db`); `postgres`, written by
 * the workers straight to a PostgreSQL database; `jetstream`, an output stream `SLUICE_OUT_P`.
 */
export const SinkSchema = z.discriminatedUnion("type", [
  z.strictObject({ type: z.literal("sqlite") }),
  z.strictObject({
    type: z.literal("postgres"),
    /** `postgres://user@host:port/database`. A password in it works but is never logged. */
    url: z.string().regex(/^postgres(ql)?:\/\//, "a postgres:// URL"),
    /** Environment variable that holds the password (instead of the URL). */
    passwordEnv: z.string().min(1).optional(),
    /** File that holds the password (instead of the URL); its first line is used. */
    passwordFile: z.string().min(1).optional(),
    /** Connections each worker keeps open to the database. */
    poolSize: z.number().int().min(1).max(100).default(8),
    /** Longest a statement may run before the commit fails and is retried, ms. */
    statementTimeoutMs: z.number().int().min(100).default(10_000),
    /**
     * Longest the server keeps a worker's transaction open while waiting for its next statement,
     * ms: a worker frozen mid-commit loses its transaction (and its shard's row lock) after this.
     */
    idleInTransactionTimeoutMs: z.number().int().min(100).default(2_000),
  }),
  z.strictObject({
    type: z.literal("jetstream"),
    /** Replicas of the output stream. */
    replicas: z.number().int().min(1).max(5).default(3),
  }),
]);
export type SinkConfig = z.infer<typeof SinkSchema>;

/** A dotted path into a record's value: `amount`, `customer.id`. */
const fieldPath = z.string().regex(/^[^.\s]+(\.[^.\s]+)*$/, "a field name, or names joined by dots");

/**
 * A quality rule (README "Quality rules"): exactly one check, a mode, an optional canary share.
 * `shadow` counts and logs a failure and keeps the record; `enforce` dead-letters it with
 * `RULE_FAILED`; `canary: P` enforces on P % of keys (by key hash) and shadows on the rest.
 */
export const RuleSchema = z
  .strictObject({
    name,
    mode: z.enum(["off", "shadow", "enforce"]).default("enforce"),
    canary: z.number().min(0).max(100).optional(),
    /** The field is present and not null. */
    notNull: fieldPath.optional(),
    /** The field is a number within [min, max] (either bound optional). */
    range: z
      .strictObject({ field: fieldPath, min: z.number().optional(), max: z.number().optional() })
      .optional(),
    /** The field is a string matching the regular expression (JavaScript syntax, `u` flag). */
    pattern: z.strictObject({ field: fieldPath, regex: z.string().min(1) }).optional(),
    /** Two fields, both numbers or both strings, compare as `op` says. */
    compare: z
      .strictObject({ left: fieldPath, op: z.enum(["<", "<=", "==", "!=", ">=", ">"]), right: fieldPath })
      .optional(),
    /** A CEL expression over `record` (the value) and `key` that must be true. */
    expression: z.string().min(1).optional(),
  })
  .refine(
    (r) =>
      [r.notNull, r.range, r.pattern, r.compare, r.expression].filter((c) => c !== undefined).length === 1,
    { message: "a rule has exactly one check: notNull, range, pattern, compare or expression" },
  );
export type RuleConfig = z.infer<typeof RuleSchema>;

/** A duration as text with units (`24h`, `90s`, `1h30m`) or a number of ms; parsed to ms. */
export const durationMs = z.union([z.number().int().min(1), z.string()]).transform((v, ctx) => {
  if (typeof v === "number") return v;
  const ms = /[a-zµ]/i.test(v) ? parseDuration(v) : null;
  if (ms === null || ms === undefined || !Number.isFinite(ms) || ms < 1) {
    ctx.addIssue({ code: "custom", message: `"${v}" is not a duration: use units, e.g. 90s, 30m, 24h, 7d` });
    return z.NEVER;
  }
  return Math.round(ms);
});

/** A field name in a record (a dotted path reaches into maps). */
const field = fieldPath;

/**
 * One normalisation step (README "Transform stages"), applied in order; each names exactly one
 * operation. A step that cannot apply to a record dead-letters it (`NORMALISE_FAILED`).
 */
export const NormaliseStepSchema = z.union([
  z.strictObject({ rename: z.strictObject({ from: field, to: field }) }),
  z.strictObject({ drop: z.union([field, z.array(field).min(1)]) }),
  z.strictObject({ default: z.strictObject({ field, value: z.json() }) }),
  z.strictObject({
    cast: z.strictObject({ field, to: z.enum(["string", "number", "integer", "boolean"]) }),
  }),
  z.strictObject({ trim: field }),
  z.strictObject({ lower: field }),
  z.strictObject({ upper: field }),
  /** ISO-8601 text, seconds or milliseconds since the epoch, to one form. */
  z.strictObject({
    timestamp: z.strictObject({ field, to: z.enum(["iso", "ms"]).default("iso") }),
  }),
  /** Drop the field, or replace its text by `*` but its last `keep` characters. */
  z.strictObject({
    redact: z.strictObject({
      field,
      mode: z.enum(["drop", "mask"]).default("mask"),
      keep: z.number().int().min(0).default(0),
    }),
  }),
  /**
   * A keyed HMAC-SHA-256 of the field's text (hex), the key from an environment variable or a
   * file (never logged): the same value always gives the same pseudonym, and only the key's
   * holder can link the two.
   */
  z.strictObject({
    pseudonymise: z
      .strictObject({ field, keyEnv: z.string().min(1).optional(), keyFile: z.string().min(1).optional() })
      .refine((p) => (p.keyEnv === undefined) !== (p.keyFile === undefined), {
        message: "name the key in exactly one of keyEnv or keyFile",
      }),
  }),
  /** The field set to a CEL expression's value over `record` and `key`: what steps cannot say. */
  z.strictObject({ set: z.strictObject({ field, expression: z.string().min(1) }) }),
]);
export type NormaliseStep = z.infer<typeof NormaliseStepSchema>;

/**
 * A lookup in a reference table kept in NATS KV (`sluice_ref_<table>`, JSON values keyed by the
 * lookup value): the entry for the record's `key` field goes into field `into`.
 */
export const EnrichSchema = z.strictObject({
  table: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, "letters, digits, _ or -"),
  key: field,
  into: field,
  /** `keep` the record with `into` null, or `reject` it (`ENRICH_MISSING`). */
  onMissing: z.enum(["keep", "reject"]).default("keep"),
});
export type EnrichConfig = z.infer<typeof EnrichSchema>;

/**
 * Keep the first record per business key within `window` (README "Deduplication"): decided in
 * the sink transaction, where the "seen" marks live.
 */
export const DedupeSchema = z
  .strictObject({
    /** The business key: a field, or a CEL expression over `record` and `key`. */
    key: field.optional(),
    keyExpression: z.string().min(1).optional(),
    window: durationMs,
  })
  .refine((d) => (d.key === undefined) !== (d.keyExpression === undefined), {
    message: "name the business key in exactly one of key or keyExpression",
  });
export type DedupeConfig = z.infer<typeof DedupeSchema>;

/** A transform stage: one of `normalise` (steps), `enrich` or `dedupe` (at most one, last). */
export const StageSchema = z.union([
  z.strictObject({ normalise: z.array(NormaliseStepSchema).min(1) }),
  z.strictObject({ enrich: EnrichSchema }),
  z.strictObject({ dedupe: DedupeSchema }),
]);
export type StageConfig = z.infer<typeof StageSchema>;

export const PipelineSchema = z.strictObject({
  name,
  /** Number of shards; fixed for the life of the stream. */
  shards: z.number().int().min(1).max(4096).default(16),
  /** Stream replicas; 3 on a 3-node cluster. */
  replicas: z.number().int().min(1).max(5).default(3),
  /** Dedup window of the input stream, ms (>= 2 minutes). */
  duplicateWindowMs: z.number().int().min(120_000).default(120_000),
  /**
   * `shared`: one input stream for all shards (one Raft group). `per-shard`: one stream per
   * shard, read unfiltered and led from all servers, at one Raft group per shard. See
   * `StreamLayout` in shared/wire.ts. Fixed for the life of the pipeline.
   */
  streams: z.enum(["shared", "per-shard"]).default("shared"),
  /**
   * When a record is acknowledged to its producer. `replicated`: once a quorum of the stream's
   * servers holds it (in memory and the page cache; each server writes it to disk within its
   * `sync_interval`, 2 min by default). `fsync`: once a quorum has also written it to disk
   * (`sync_interval: always` on the servers, which is server-wide: `sluice up` sets it when any
   * pipeline asks for it).
   */
  durability: z.enum(["replicated", "fsync"]).default("replicated"),
  /** This pipeline's sink, when not the cluster's (`sink` at the top level). */
  sink: SinkSchema.optional(),
  /**
   * How a database sink keeps the pipeline's rows: `append` every record (no unique key, so a
   * duplicate would show), or `upsert` one row per key, the newest by source sequence.
   */
  tableMode: z.enum(["append", "upsert"]).default("append"),
  /**
   * Records are checked against this registry subject: its version pinned with each shard's
   * checkpoint, or the version a record's `Sluice-Schema-Id` names, resolved to the pinned one.
   */
  schema: z
    .strictObject({ subject: z.string().regex(/^[A-Za-z0-9_-]{1,128}$/, "letters, digits, _ or -") })
    .optional(),
  /** Quality rules, checked in order after the schema. */
  rules: z.array(RuleSchema).default([]),
  /** Transform stages after the rules, in order (README "Transform stages"). */
  stages: z.array(StageSchema).default([]),
  /**
   * The field holding a record's event time: milliseconds since the epoch (a number, or a CBOR
   * integer of any width) or ISO-8601 text. Read after the transform stages, before dedupe
   * (which then goes by it); a record without one is dead-lettered (`EVENT_TIME_INVALID`).
   */
  eventTime: z
    .string()
    .regex(/^[^.]+(\.[^.]+)*$/, "a field name, or a dotted path")
    .optional(),
  /**
   * Late records: a record whose event time is strictly below the shard's watermark (the highest
   * event time before it in the shard's stream order, less `allowed`) is late. Needs `eventTime`.
   */
  lateness: z.strictObject({ allowed: durationMs }).optional(),
  /**
   * This pipeline is a branch of the merge `into` (see `merges`): each on-time record is also
   * applied to the merge's table, in the same transaction, by the merge's policy; `priority`
   * ranks the branches (higher wins where the policy compares it).
   */
  merge: z.strictObject({ into: name, priority: z.number().int().default(0) }).optional(),
});

/**
 * A merge point of parallel branches (README "Merges"): one row per key in a table named after
 * it, the record with the highest (event time, branch priority, record id) under `latest`, the
 * highest (branch priority, event time, record id) under `priority`.
 */
export const MergeSchema = z.strictObject({
  name,
  /** A field every branch record must carry, equal to the key it was published under. */
  key: z
    .string()
    .regex(/^[^.]+(\.[^.]+)*$/, "a field name, or a dotted path")
    .optional(),
  policy: z.enum(["latest", "priority"]).default("latest"),
});
export type MergeConfig = z.infer<typeof MergeSchema>;

export const TimingSchema = z.strictObject({
  /** Worker heartbeat interval, ms. */
  heartbeatMs: z.number().int().min(20).default(200),
  /** Silence after which the coordinator declares a worker dead, ms. */
  failureTimeoutMs: z.number().int().min(100).default(1000),
  /** A worker re-checks a lease not confirmed for this long before committing, ms; keep it below `failureTimeoutMs` so a lease expires before the coordinator can move the shard. */
  leaseTtlMs: z.number().int().min(100).default(800),
  /** Coordinator leader lease, ms: renewed every third of it, taken over after it. */
  leaderTtlMs: z.number().int().min(300).default(1500),
  /** A graceful hand-off not released within this long is forced, ms. */
  handoffTimeoutMs: z.number().int().min(100).default(5000),
  /**
   * A shard moving to another worker keeps its owner until the new one reports its consumer
   * open, or this long has passed, ms (0: revoke at once, and the consumer is opened while the
   * owner drains, which lengthens the shard's pause when opening is slow).
   */
  prepareTimeoutMs: z.number().int().min(0).default(1500),
});

export const WorkerSchema = z
  .strictObject({
    /** Largest batch committed in one sink transaction, records. */
    batchMax: z.number().int().min(1).max(10_000).default(1000),
    /** Smallest batch limit the adaptive sizing goes down to, records. */
    batchMin: z.number().int().min(1).default(16),
    /** A sink commit slower than this halves the shard's batch limit, ms. */
    targetCommitMs: z.number().int().min(1).default(100),
    /** A shard that is behind waits up to this long to fill its batch, ms (0: commit what came). */
    lingerMs: z.number().int().min(0).max(1000).default(5),
    /**
     * Max unacknowledged messages per shard consumer: the in-flight bound. At least twice
     * `batchMax`: the client keeps `feedBufferMessages` pulled ahead while a batch is committing,
     * and a pull beyond this bound is refused by the server (409), which stalls the consumer
     * until two idle heartbeats are missed.
     */
    maxAckPending: z.number().int().min(2).default(4000),
    /**
     * Records a worker holds unacknowledged across all its shards, at most: pulled ahead,
     * batched, or being committed. Each shard's consumer gets an equal share of it when it is
     * opened (`shardFlow`), capped by `maxAckPending` and never below 64 records, so a worker
     * owning many shards keeps bounded memory (about 1.5 KiB per 256-byte record in flight)
     * instead of `maxAckPending` records per shard.
     */
    maxBufferedRecords: z.number().int().min(64).default(65_536),
    /** How long a pull waits for the first message of a batch, ms. */
    pullWaitMs: z.number().int().min(5).default(100),
    /** Server redelivers an unacked message after this long, ms. */
    ackWaitMs: z.number().int().min(1000).default(30_000),
  })
  .refine((w) => w.maxAckPending >= 2 * w.batchMax, {
    message: "worker.maxAckPending must be at least twice worker.batchMax",
    path: ["maxAckPending"],
  });

/**
 * The worker count the backlog asks for (README "Autoscaling"; `shared/core/autoscale.ts`):
 * ceil(backlog / recordsPerWorker) within [minWorkers, maxWorkers], up once a higher target held
 * for `scaleUpAfter`, down once every target stayed lower for `scaleDownAfter`.
 */
export const AutoscaleSchema = z
  .strictObject({
    recordsPerWorker: z.number().int().min(1).default(100_000),
    minWorkers: z.number().int().min(1).default(1),
    maxWorkers: z.number().int().min(1).default(16),
    scaleUpAfter: durationMs.default(30_000),
    scaleDownAfter: durationMs.default(300_000),
  })
  .refine((a) => a.maxWorkers >= a.minWorkers, {
    message: "autoscale.maxWorkers must be at least autoscale.minWorkers",
    path: ["maxWorkers"],
  });
export type AutoscaleConfig = z.infer<typeof AutoscaleSchema>;

export const ConfigSchema = z.strictObject({
  pipelines: z
    .array(PipelineSchema)
    .min(1)
    .default([
      {
        name: "demo",
        shards: 16,
        replicas: 3,
        duplicateWindowMs: 120_000,
        streams: "shared",
        durability: "replicated",
        tableMode: "append",
        rules: [],
        stages: [],
      },
    ]),
  /** Merge points of pipelines that name them in `merge.into`. */
  merges: z.array(MergeSchema).default([]),
  /** Where pipelines commit unless they name a sink of their own. */
  sink: SinkSchema.default({ type: "sqlite" }),
  timing: TimingSchema.default(TimingSchema.parse({})),
  worker: WorkerSchema.default(WorkerSchema.parse({})),
  autoscale: AutoscaleSchema.default(AutoscaleSchema.parse({})),
});

export type PipelineConfig = z.infer<typeof PipelineSchema>;
export type TimingConfig = z.infer<typeof TimingSchema>;
export type WorkerConfig = z.infer<typeof WorkerSchema>;
export type SluiceConfig = z.infer<typeof ConfigSchema>;

export function parseConfig(raw: unknown): SluiceConfig {
  const r = ConfigSchema.safeParse(raw ?? {});
  if (!r.success) {
    throw new SluiceError(ErrorCode.InvalidConfig, `invalid config: ${z.prettifyError(r.error)}`);
  }
  return checkConfig(r.data);
}

/** The checks across fields of a config whose shape is valid: returns it, or throws. */
export function checkConfig(cfg: SluiceConfig): SluiceConfig {
  const names = new Set<string>();
  for (const p of cfg.pipelines) {
    if (names.has(p.name))
      throw new SluiceError(ErrorCode.InvalidConfig, `pipeline '${p.name}' is defined twice`);
    names.add(p.name);
    const rules = new Set<string>();
    for (const r of p.rules) {
      if (rules.has(r.name))
        throw new SluiceError(
          ErrorCode.InvalidConfig,
          `pipeline '${p.name}': rule '${r.name}' is defined twice`,
        );
      rules.add(r.name);
    }
    const dedupes = p.stages.filter((s) => "dedupe" in s).length;
    if (dedupes > 0 && sinkOf(cfg, p).type === "jetstream")
      throw new SluiceError(
        ErrorCode.InvalidConfig,
        `pipeline '${p.name}': dedupe needs a database sink (sqlite or postgres), whose transaction holds its marks; an output stream has none`,
      );
    if (dedupes > 1 || (dedupes === 1 && !("dedupe" in p.stages[p.stages.length - 1]!)))
      throw new SluiceError(
        ErrorCode.InvalidConfig,
        `pipeline '${p.name}': at most one dedupe stage, and it comes last (the sink decides it)`,
      );
    if (p.lateness && p.eventTime === undefined)
      throw new SluiceError(
        ErrorCode.InvalidConfig,
        `pipeline '${p.name}': lateness needs eventTime (the field the watermark is computed from)`,
      );
    const sink = sinkOf(cfg, p);
    if (p.lateness && sink.type === "jetstream")
      throw new SluiceError(
        ErrorCode.InvalidConfig,
        `pipeline '${p.name}': lateness needs a database sink (sqlite or postgres), whose late table records each late record; an output stream has none`,
      );
    if (p.tableMode === "upsert" && sink.type === "jetstream")
      throw new SluiceError(
        ErrorCode.InvalidConfig,
        `pipeline '${p.name}': tableMode upsert needs a database sink (sqlite or postgres), not jetstream`,
      );
  }
  checkMerges(cfg);
  return cfg;
}

/** The merge a pipeline is a branch of, if any. */
export function mergeOf(cfg: SluiceConfig, p: PipelineConfig): MergeConfig | undefined {
  return p.merge ? cfg.merges.find((m) => m.name === p.merge!.into) : undefined;
}

/** A merge's branches: the pipelines that name it in `merge.into`. */
export function branchesOf(cfg: Pick<SluiceConfig, "pipelines">, merge: string): PipelineConfig[] {
  return cfg.pipelines.filter((p) => p.merge?.into === merge);
}

function checkMerges(cfg: SluiceConfig): void {
  const fail = (why: string): never => {
    throw new SluiceError(ErrorCode.InvalidConfig, why);
  };
  const names = new Set<string>();
  for (const m of cfg.merges) {
    if (names.has(m.name)) fail(`merge '${m.name}' is defined twice`);
    names.add(m.name);
    if (cfg.pipelines.some((p) => p.name === m.name))
      fail(`merge '${m.name}' has a pipeline's name: its table would be the pipeline's`);
    const branches = branchesOf(cfg, m.name);
    if (branches.length === 0) fail(`merge '${m.name}' has no branches (no pipeline names it in merge.into)`);
    const shards = new Set(branches.map((p) => p.shards));
    if (shards.size > 1)
      fail(
        `merge '${m.name}': its branches must have the same shard count (${branches.map((p) => `${p.name}: ${p.shards}`).join(", ")})`,
      );
    const sinks = new Set(branches.map((p) => JSON.stringify(sinkOf(cfg, p))));
    if (sinks.size > 1)
      fail(`merge '${m.name}': its branches must commit to the same sink, which holds its table`);
    for (const p of branches) {
      if (p.eventTime === undefined)
        fail(`pipeline '${p.name}': a branch of merge '${m.name}' needs eventTime (the policy orders by it)`);
      if (sinkOf(cfg, p).type === "jetstream")
        fail(
          `pipeline '${p.name}': merge '${m.name}' needs a database sink (sqlite or postgres), whose transaction applies its rows; an output stream has none`,
        );
    }
  }
  for (const p of cfg.pipelines)
    if (p.merge && !names.has(p.merge.into))
      fail(`pipeline '${p.name}': merge.into names '${p.merge.into}', which merges does not define`);
}

/** A URL with any password in it replaced, fit for logs, status and error messages. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return url.replace(/\/\/([^:/@]+):[^@]*@/, "//$1:***@");
  }
}

/** What a sink is, in words fit for logs (no secret). */
export function describeSink(s: SinkConfig): string {
  return s.type === "postgres" ? `postgres ${redactUrl(s.url)}` : s.type;
}

/** The sink a pipeline commits to: its own, or the cluster's. */
export const sinkOf = (cfg: SluiceConfig, p: PipelineConfig): SinkConfig => p.sink ?? cfg.sink;

/** `v` as JSON with every object's keys sorted: the same text for the same config, however written. */
function canonicalJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(",")}]`;
  if (typeof v === "object" && v !== null) {
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o)
      .filter((k) => o[k] !== undefined)
      .sort();
    return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(o[k])}`).join(",")}}`;
  }
  return JSON.stringify(v) ?? "null";
}

/**
 * A pipeline config's revision: the first 16 hex digits of the SHA-256 of its canonical JSON,
 * defaults filled. Every worker running the same config names the same revision, which each
 * batch's audit row records; any change to the pipeline's settings or stages changes it.
 */
export function configRevision(p: PipelineConfig): string {
  return createHash("sha256").update(canonicalJson(p)).digest("hex").slice(0, 16);
}

export function pipelineOf(cfg: SluiceConfig, pipeline: string): PipelineConfig {
  const p = cfg.pipelines.find((x) => x.name === pipeline);
  if (!p) throw new SluiceError(ErrorCode.InvalidConfig, `unknown pipeline '${pipeline}'`);
  return p;
}

/** Every shard key of every pipeline, `<pipeline>.<shard>`. */
export function allShardKeys(cfg: SluiceConfig): string[] {
  return cfg.pipelines.flatMap((p) => Array.from({ length: p.shards }, (_, i) => `${p.name}.${i}`));
}
