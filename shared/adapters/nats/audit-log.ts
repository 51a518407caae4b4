/**
 * The audit stream on NATS (`AUDIT_STREAM`, README "Security"): appending entries, the config
 * changes a provisioning records, and reading the stream in order for `sluice audit`.
 */

import { hostname, userInfo } from "node:os";
import {
  DeliverPolicy,
  DiscardPolicy,
  JetStreamApiCodes,
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type StreamConfig,
} from "@nats-io/jetstream";
import { type NatsConnection, nanos } from "@nats-io/transport-node";
import { type AuditActor, type AuditEntry, decodeAudit, encodeAudit } from "../../contract/audit.js";
import { configRevision, type SluiceConfig } from "../../contract/config.js";
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import type { Logger } from "../../contract/logger.js";
import {
  AUDIT_STREAM,
  AUDIT_SUBJECTS,
  type AuditKind,
  auditKindSubjects,
  auditSubject,
} from "../../contract/wire.js";
import { configAuditEntry } from "../../core/audit-entries.js";
import { apiCode, unavailable } from "./jetstream-errors.js";

/** How long an entry is kept (limits retention): 90 days, ms. */
export const AUDIT_MAX_AGE_MS = 90 * 24 * 3_600_000;

/** A fire-and-forget append's wait for its PubAck, ms; it blocks nothing meanwhile. */
const QUIET_TIMEOUT_MS = 5_000;
/** Failed quiet appends are logged at most once per this many ms (a missing stream is not a flood). */
const QUIET_LOG_EVERY_MS = 10_000;

/**
 * The audit stream's config: file storage, kept by age rather than count, so a burst of fences (a
 * chaos run) cannot push out last month's config changes.
 */
export function auditStreamConfig(replicas: number): Partial<StreamConfig> & { name: string } {
  return {
    name: AUDIT_STREAM,
    subjects: [AUDIT_SUBJECTS],
    num_replicas: replicas,
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    max_age: nanos(AUDIT_MAX_AGE_MS),
  };
}

/**
 * Creates the audit stream on a cluster provisioned before it existed (as the schema commands
 * make their bucket); a no-op where it exists, whatever its settings.
 */
export async function ensureAuditStream(nc: NatsConnection, replicas: number): Promise<void> {
  const jsm = await jetstreamManager(nc);
  try {
    await jsm.streams.info(AUDIT_STREAM);
    return;
  } catch (err) {
    if (apiCode(err) !== JetStreamApiCodes.StreamNotFound)
      throw unavailable(`cannot read ${AUDIT_STREAM}`, err);
  }
  try {
    await jsm.streams.add(auditStreamConfig(replicas));
  } catch (err) {
    // Made meanwhile by another command: as good.
    if (!/already in use|name already/i.test(String((err as Error)?.message))) {
      throw unavailable(`cannot create ${AUDIT_STREAM}`, err);
    }
  }
}

/**
 * Who an operator's command is: `cli:<os user>@<host>`, acting as `role` (the admin's, for the
 * commands that write), with the NATS user it connected as when it authenticated.
 */
export function commandActor(role = "admin", user?: string): AuditActor {
  let osUser: string;
  try {
    osUser = userInfo().username;
  } catch {
    // No passwd entry for this uid (a container's arbitrary uid).
    osUser = process.env.USER ?? String(process.getuid?.() ?? "?");
  }
  return { role, id: `cli:${osUser}@${hostname()}`, ...(user === undefined ? {} : { user }) };
}

/** The subject an entry is stored under. */
export function subjectOf(e: AuditEntry): string {
  switch (e.kind) {
    case "config":
      return auditSubject("config", e.target.pipeline);
    case "schema":
      return auditSubject("schema", e.target.subject);
    case "ref":
      return auditSubject("ref", e.target.table);
    case "fence":
      return auditSubject("fence", e.target.pipeline, e.target.shard);
  }
}

export class AuditLog {
  private readonly js: JetStreamClient;
  private quietFailures = 0;
  private quietLoggedAt = -Infinity;

  constructor(
    nc: NatsConnection,
    private readonly log?: Logger,
  ) {
    this.js = jetstream(nc);
  }

  /**
   * Appends `e` and waits for the stream to store it; returns its sequence. `expectLastSeq`
   * makes it a compare-and-set on the entry's subject (0: the subject must have none).
   */
  async append(e: AuditEntry, opts: { msgId?: string; expectLastSeq?: number } = {}): Promise<number> {
    try {
      const ack = await this.js.publish(subjectOf(e), encodeAudit(e), {
        ...(opts.msgId === undefined ? {} : { msgID: opts.msgId }),
        ...(opts.expectLastSeq === undefined ? {} : { expect: { lastSubjectSequence: opts.expectLastSeq } }),
      });
      return ack.seq;
    } catch (err) {
      if (apiCode(err) === JetStreamApiCodes.StreamWrongLastSequence) {
        throw new SluiceError(ErrorCode.Conflict, `audit ${subjectOf(e)}: another writer came first`, {
          cause: err,
          retryable: true,
        });
      }
      throw unavailable(`cannot append to ${AUDIT_STREAM} (provision the cluster to create it)`, err);
    }
  }

  /**
   * Appends `e` without waiting (fences: the lease path never waits on the audit). A failure is
   * logged at warn, at most once per `QUIET_LOG_EVERY_MS` with the failures since.
   */
  appendQuietly(e: AuditEntry, msgId?: string): void {
    this.js
      .publish(subjectOf(e), encodeAudit(e), {
        timeout: QUIET_TIMEOUT_MS,
        ...(msgId === undefined ? {} : { msgID: msgId }),
      })
      .catch((err: unknown) => {
        this.quietFailures++;
        const now = Date.now();
        if (now - this.quietLoggedAt < QUIET_LOG_EVERY_MS) return;
        this.quietLoggedAt = now;
        this.log?.warn(
          { subject: subjectOf(e), failures: this.quietFailures, err: (err as Error).message },
          `audit entry not stored in ${AUDIT_STREAM}`,
        );
        this.quietFailures = 0;
      });
  }
}

/** The last entry stored on `subject` and its sequence; null when there is none. */
export async function lastAuditEntry(
  jsm: JetStreamManager,
  subject: string,
): Promise<{ entry: AuditEntry | null; seq: number } | null> {
  try {
    const m = await jsm.streams.getMessage(AUDIT_STREAM, { last_by_subj: subject });
    return m ? { entry: decodeAudit(m.data), seq: m.seq } : null;
  } catch (err) {
    if (apiCode(err) === JetStreamApiCodes.NoMessageFound) return null;
    throw unavailable(`cannot read ${AUDIT_STREAM}`, err);
  }
}

/**
 * Appends a config entry for every pipeline of `cfg` whose revision differs from its last one
 * audited (`configAuditEntry`); returns those appended. Each append is a compare-and-set on the
 * pipeline's subject, so two provisionings at once record a change once.
 */
export async function recordConfigChanges(
  nc: NatsConnection,
  cfg: SluiceConfig,
  who: AuditActor,
  now: () => number = Date.now,
): Promise<AuditEntry[]> {
  const jsm = await jetstreamManager(nc);
  const log = new AuditLog(nc);
  const out: AuditEntry[] = [];
  for (const p of cfg.pipelines) {
    const hash = configRevision(p);
    for (let attempt = 1; ; attempt++) {
      const last = await lastAuditEntry(jsm, auditSubject("config", p.name));
      const e = configAuditEntry(p.name, hash, last?.entry ?? null, who, now());
      if (!e) break;
      try {
        await log.append(e, { expectLastSeq: last?.seq ?? 0 });
        out.push(e);
        break;
      } catch (err) {
        if ((err as SluiceError).code !== ErrorCode.Conflict || attempt >= 5) throw err;
      }
    }
  }
  return out;
}

/** An entry as read back, with its stream sequence. */
export type StoredAudit = AuditEntry & { seq: number };

/**
 * The entries stored when the read began, in order, through an ordered consumer (ephemeral,
 * deleted after): of `kinds` (all when empty), stored at or after `sinceMs` (server time), the
 * last `limit` (all when absent). Messages that are not entries are skipped.
 */
export async function readAudit(
  nc: NatsConnection,
  opts: { kinds?: readonly AuditKind[]; sinceMs?: number; limit?: number } = {},
): Promise<StoredAudit[]> {
  const jsm = await jetstreamManager(nc);
  let last: number;
  try {
    last = (await jsm.streams.info(AUDIT_STREAM)).state.last_seq;
  } catch (err) {
    if (apiCode(err) === JetStreamApiCodes.StreamNotFound)
      throw new SluiceError(
        ErrorCode.InvalidConfig,
        `no stream ${AUDIT_STREAM}: provision the cluster (sluice provision, or sluice up) to create it`,
      );
    throw unavailable(`cannot read ${AUDIT_STREAM}`, err);
  }
  const consumer = await jetstream(nc).consumers.get(AUDIT_STREAM, {
    ...(opts.kinds && opts.kinds.length > 0 ? { filter_subjects: opts.kinds.map(auditKindSubjects) } : {}),
    ...(opts.sinceMs === undefined
      ? { deliver_policy: DeliverPolicy.All }
      : { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(opts.sinceMs).toISOString() }),
  });
  const out: StoredAudit[] = [];
  try {
    if ((await consumer.info(true)).num_pending === 0) return out;
    const it = await consumer.consume({ max_messages: 1_024 });
    try {
      for await (const m of it) {
        const e = decodeAudit(m.data);
        if (e) {
          out.push({ ...e, seq: m.seq });
          // Only the last `limit` are shown: keep no more in memory than that.
          if (opts.limit !== undefined && out.length > opts.limit) out.shift();
        }
        // Entries stored after the read began wait for the next read.
        if (m.seq >= last || m.info.pending === 0) break;
      }
    } finally {
      await it.close().catch(() => undefined);
    }
  } finally {
    await consumer.delete().catch(() => undefined);
  }
  return out;
}
