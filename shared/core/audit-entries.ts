/**
 * Which audit entries to write (README "Security", `contract/audit.ts`): pure, given the time and
 * what the stream already holds; the adapters read the stream and publish.
 */
import type { AuditActor, AuditEntry, ConfigAudit, FenceAudit } from "../contract/audit.js";

/**
 * The entry recording pipeline `pipeline`'s config at revision `hash`, or null when the last
 * entry of that pipeline (`last`, null: none) already names it. A config counts as changed only
 * when its revision differs from the last one audited, so provisioning the same config again
 * (every `sluice up`, a retried `sluice provision`) records nothing.
 */
export function configAuditEntry(
  pipeline: string,
  hash: string,
  last: AuditEntry | null,
  who: AuditActor,
  at: number,
): ConfigAudit | null {
  const before = last?.kind === "config" ? last.after : null;
  if (before?.hash === hash) return null;
  return { v: 1, kind: "config", who, at, target: { pipeline }, before, after: { hash } };
}

/** A worker's fence of shard `shard` of `pipeline` at `epoch`, after `previous` (see `FenceAudit`). */
export function fenceAuditEntry(
  fence: { pipeline: string; shard: number; epoch: number; previous: FenceAudit["before"] },
  who: AuditActor,
  at: number,
): FenceAudit {
  return {
    v: 1,
    kind: "fence",
    who,
    at,
    target: { pipeline: fence.pipeline, shard: fence.shard },
    before: fence.previous,
    after: { epoch: fence.epoch },
  };
}
