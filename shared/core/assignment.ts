/**
 * Sticky, balanced shard assignment. Pure and deterministic: the same inputs always give
 * the same output, whatever the iteration order of the inputs.
 *
 * Guarantees (checked by property tests):
 * - every shard gets exactly one live member when at least one member exists;
 * - each member's count is within 1 of `shards * capacity / totalCapacity` (so members of
 *   equal capacity differ by at most 1);
 * - a shard whose current owner is live and not over its quota stays where it is, so a join
 *   or leave moves only the shards it must.
 */

export interface MemberCapacity {
  id: string;
  /** Relative weight, > 0. Members of capacity 2 get about twice the shards of capacity 1. */
  capacity: number;
}

/** shard key -> owner id, or null when there are no members. */
export type Assignment = Map<string, string | null>;

const byId = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

/** Per-member quotas summing to `shardCount`, favouring current owners for the remainders. */
export function quotas(
  shardCount: number,
  members: readonly MemberCapacity[],
  currentCounts: ReadonlyMap<string, number>,
): Map<string, number> {
  const out = new Map<string, number>();
  if (members.length === 0) return out;
  const total = members.reduce((s, m) => s + m.capacity, 0);
  const rows = members.map((m) => {
    const ideal = (shardCount * m.capacity) / total;
    const base = Math.floor(ideal);
    return { id: m.id, base, frac: ideal - base, cur: currentCounts.get(m.id) ?? 0 };
  });
  let remainder = shardCount - rows.reduce((s, r) => s + r.base, 0);
  rows.sort((a, b) => b.frac - a.frac || b.cur - a.cur || byId(a.id, b.id));
  for (const r of rows) {
    out.set(r.id, r.base + (remainder > 0 ? 1 : 0));
    if (remainder > 0) remainder--;
  }
  return out;
}

export function assignShards(
  shards: readonly string[],
  members: readonly MemberCapacity[],
  current: ReadonlyMap<string, string | null>,
): Assignment {
  const result: Assignment = new Map();
  const sortedShards = [...shards].sort(byId);
  if (members.length === 0) {
    for (const s of sortedShards) result.set(s, null);
    return result;
  }
  const live = new Set(members.map((m) => m.id));
  const currentCounts = new Map<string, number>();
  for (const s of sortedShards) {
    const o = current.get(s);
    if (o != null && live.has(o)) currentCounts.set(o, (currentCounts.get(o) ?? 0) + 1);
  }
  const quota = quotas(sortedShards.length, members, currentCounts);
  const kept = new Map<string, number>();
  const orphans: string[] = [];
  for (const s of sortedShards) {
    const o = current.get(s);
    if (o != null && live.has(o) && (kept.get(o) ?? 0) < (quota.get(o) ?? 0)) {
      result.set(s, o);
      kept.set(o, (kept.get(o) ?? 0) + 1);
    } else {
      orphans.push(s);
    }
  }
  const memberIds = members.map((m) => m.id).sort(byId);
  for (const s of orphans) {
    let best: string | undefined;
    let bestDeficit = 0;
    for (const id of memberIds) {
      const deficit = (quota.get(id) ?? 0) - (kept.get(id) ?? 0);
      if (deficit > bestDeficit) {
        best = id;
        bestDeficit = deficit;
      }
    }
    // Quotas sum to the shard count, so a member with a deficit always exists.
    const owner = best ?? memberIds[0]!;
    result.set(s, owner);
    kept.set(owner, (kept.get(owner) ?? 0) + 1);
  }
  return result;
}

/** Number of shards whose owner differs between two assignments (moves of live shards). */
export function movedShards(before: ReadonlyMap<string, string | null>, after: Assignment): number {
  let moved = 0;
  for (const [s, o] of after) {
    const prev = before.get(s);
    if (prev != null && prev !== o) moved++;
  }
  return moved;
}
