/**
 * Stable error codes. A code never changes meaning once released: operators alert on
 * them and dead-letter entries carry them.
 */
export const ErrorCode = {
  /** The sink saw a higher epoch for this shard: the writer is a zombie and must stop. */
  Fenced: "FENCED",
  /** A compare-and-set on a KV entry lost the race; re-read and decide again. */
  Conflict: "CONFLICT",
  /** A dependency (NATS, SQLite lock) did not answer in time. */
  Unavailable: "UNAVAILABLE",
  /** Payload bytes could not be decoded as CBOR or JSON. */
  UndecodablePayload: "UNDECODABLE_PAYLOAD",
  /** Payload decoded but is not a map/object. */
  NotAMap: "NOT_A_MAP",
  /** The record has no `Nats-Msg-Id` header. */
  MissingId: "MISSING_ID",
  /** The record has no key: neither a key token in its subject nor a `Sluice-Key` header. */
  MissingKey: "MISSING_KEY",
  /** The record's key (its `Sluice-Key`, or its subject's key) maps to another shard than the one that holds it. */
  KeyShardMismatch: "KEY_SHARD_MISMATCH",
  /** The producer cannot send a record: its id or key has a character headers or subjects cannot carry. */
  InvalidRecord: "INVALID_RECORD",
  /** Configuration or command-line input is invalid. */
  InvalidConfig: "INVALID_CONFIG",
  /** A local cluster operation failed (process start, readiness). */
  ClusterFailure: "CLUSTER_FAILURE",
  /** The NATS server is older than the oldest release sluice runs on (`NATS_SERVER_FLOOR`). */
  UnsupportedServer: "UNSUPPORTED_SERVER",
  /** A schema was refused by its subject's compatibility mode; the message names each problem. */
  SchemaIncompatible: "SCHEMA_INCOMPATIBLE",
  /**
   * A record failed its pipeline's schema (or named, in `Sluice-Schema-Id`, a schema that is not
   * a version of the subject); `Sluice-Error` holds the validator's first errors.
   */
  SchemaViolation: "SCHEMA_VIOLATION",
  /** A pipeline's schema subject is not registered yet: its shards wait (retryable, never a dead letter). */
  SchemaSubjectMissing: "SCHEMA_SUBJECT_MISSING",
  /** A record failed an enforced quality rule; the message names the rule. */
  RuleFailed: "RULE_FAILED",
  /** A normalisation step could not apply to a record (a cast of `"abc"` to a number); the message names the step. */
  NormaliseFailed: "NORMALISE_FAILED",
  /** An enrichment found no reference entry for the record's lookup value and its `onMissing` is `reject`. */
  EnrichMissing: "ENRICH_MISSING",
  /** A deduplicating pipeline's record has no business key (its field absent, or not text or a number). */
  DedupeKeyMissing: "DEDUPE_KEY_MISSING",
  /** A record of a pipeline with `eventTime` has no readable event time (absent, not a number of ms nor ISO-8601 text). */
  EventTimeInvalid: "EVENT_TIME_INVALID",
  /** A merge branch's record whose merge `key` field is not the key it was published under. */
  MergeKeyMismatch: "MERGE_KEY_MISMATCH",
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** The one base error of sluice: a stable `code` and whether retrying can help. */
export class SluiceError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  /** With `Fenced`: the shard's fenced epoch that rejected the request. */
  readonly fencedBy: number | undefined;

  constructor(
    code: ErrorCode,
    message: string,
    opts: { retryable?: boolean; cause?: unknown; fencedBy?: number } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "SluiceError";
    this.code = code;
    this.retryable = opts.retryable ?? false;
    this.fencedBy = opts.fencedBy;
  }
}

export function isSluiceError(err: unknown, code?: ErrorCode): err is SluiceError {
  return err instanceof SluiceError && (code === undefined || err.code === code);
}

/** Shorthand for the fencing rejection, raised by every sink implementation. */
export function fencedError(shard: number, epoch: number, current: number): SluiceError {
  return new SluiceError(ErrorCode.Fenced, `shard ${shard}: epoch ${epoch} is fenced by epoch ${current}`, {
    retryable: false,
    fencedBy: current,
  });
}
