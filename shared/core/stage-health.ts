/**
 * What the stages report through heartbeats, as `status` and the dashboard show it: shards
 * waiting for a stage's input (a schema subject not registered yet), and the quality rules'
 * counts summed over the workers that report them. Pure: the caller hands in the time.
 */
import type { RuleCounts, StageWait } from "../contract/ownership.js";

export interface ShardWait {
  worker: string;
  /** How long it has waited, ms (clamped at 0 across clock skew). */
  sinceMsAgo: number;
  reason: string;
}

export interface StageHealth {
  /** Shard -> why it waits. */
  waiting: Record<string, ShardWait>;
  /** `pipeline.rule` -> counts over the live workers (each worker's since it started). */
  rules: Record<string, RuleCounts>;
}

/** Adds `c` to `into[key]` (made at zero when absent). */
export function addRuleCounts(into: Record<string, RuleCounts>, key: string, c: RuleCounts): void {
  const t = into[key] ?? { checked: 0, rejected: 0, shadowed: 0 };
  into[key] = {
    checked: t.checked + c.checked,
    rejected: t.rejected + c.rejected,
    shadowed: t.shadowed + c.shadowed,
  };
}

export function stageHealth(
  members: Readonly<
    Record<string, { waiting?: Record<string, StageWait>; rules?: Record<string, RuleCounts> }>
  >,
  now: number,
): StageHealth {
  const waiting: Record<string, ShardWait> = {};
  const rules: Record<string, RuleCounts> = {};
  for (const [worker, m] of Object.entries(members)) {
    for (const [shard, w] of Object.entries(m.waiting ?? {}))
      waiting[shard] = { worker, sinceMsAgo: Math.max(0, now - w.since), reason: w.reason };
    for (const [rule, c] of Object.entries(m.rules ?? {})) addRuleCounts(rules, rule, c);
  }
  return { waiting, rules };
}

/** `status` lines for waiting shards and rule counts (none when there is nothing to say). */
export function formatStageHealth(h: StageHealth): string[] {
  const lines: string[] = [];
  const waits = Object.entries(h.waiting).sort(([a], [b]) => a.localeCompare(b));
  if (waits.length > 0) lines.push(`waiting (${waits.length} shard(s) hold their records):`);
  for (const [shard, w] of waits)
    lines.push(`  ${shard.padEnd(12)} on ${w.worker}: ${(w.sinceMsAgo / 1000).toFixed(1)} s, ${w.reason}`);
  const rules = Object.entries(h.rules).sort(([a], [b]) => a.localeCompare(b));
  if (rules.length > 0) lines.push("rule                          checked   rejected   shadowed");
  for (const [rule, c] of rules)
    lines.push(
      `${rule.padEnd(28)} ${String(c.checked).padStart(9)} ${String(c.rejected).padStart(10)} ${String(c.shadowed).padStart(10)}`,
    );
  return lines;
}
