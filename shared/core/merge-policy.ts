/**
 * The merge policies as total orders over branch records (README "Merges"): `latest` ranks by
 * (event time, branch priority, record id), `priority` by (branch priority, event time, record
 * id); record ids compare as text, byte by byte in UTF-8. A total order makes the merge's row
 * for a key the same whatever order its records arrive in, however the branches interleave,
 * and through redeliveries and migrations: the highest record wins, and a lower one never
 * overwrites it.
 */

export type MergePolicy = "latest" | "priority";

export interface MergeCandidate {
  readonly recordId: string;
  readonly eventTime: number;
  readonly priority: number;
}

/**
 * `a` against `b` by code point, which is UTF-8 byte order (and PostgreSQL's `COLLATE "C"`,
 * SQLite's `BINARY`). UTF-16 code units agree except that surrogates (the code points above
 * U+FFFF) sort below U+E000–U+FFFF; they are moved above.
 */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x === y) continue;
    return codePointRank(x) < codePointRank(y) ? -1 : 1;
  }
  return a.length === b.length ? 0 : a.length < b.length ? -1 : 1;
}

const codePointRank = (u: number): number =>
  u >= 0xd800 && u <= 0xdfff ? u + 0x2000 : u >= 0xe000 ? u - 0x800 : u;

/** Negative, zero or positive as `a` ranks below, equal to or above `b` under `policy`. */
export function compareMerge(policy: MergePolicy, a: MergeCandidate, b: MergeCandidate): number {
  const byTime = a.eventTime - b.eventTime;
  const byPriority = a.priority - b.priority;
  const first = policy === "latest" ? byTime : byPriority;
  if (first !== 0) return first;
  const second = policy === "latest" ? byPriority : byTime;
  if (second !== 0) return second;
  return compareCodePoints(a.recordId, b.recordId);
}

/**
 * Of `rows` bound for one merge, the highest per key under `policy`, in key order: what one
 * statement may apply without touching a row twice, in an order every transaction shares.
 */
export function collapseForMerge<R extends MergeCandidate & { key: string }>(
  policy: MergePolicy,
  rows: readonly R[],
): R[] {
  const best = new Map<string, R>();
  for (const r of rows) {
    const cur = best.get(r.key);
    if (!cur || compareMerge(policy, r, cur) > 0) best.set(r.key, r);
  }
  return [...best.values()].sort((a, b) => compareCodePoints(a.key, b.key));
}
