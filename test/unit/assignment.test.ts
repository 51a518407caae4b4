import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  type Assignment,
  assignShards,
  type MemberCapacity,
  movedShards,
  quotas,
} from "../../shared/core/assignment.js";

const NUM_RUNS = 300;

const shardNames = (n: number): string[] => Array.from({ length: n }, (_, i) => `p.${i}`);
const memberNames = (n: number, prefix = "w"): string[] =>
  Array.from({ length: n }, (_, i) => `${prefix}${String(i).padStart(3, "0")}`);
const equal = (ids: readonly string[], capacity = 1): MemberCapacity[] => ids.map((id) => ({ id, capacity }));

function counts(a: Assignment): Map<string, number> {
  const out = new Map<string, number>();
  for (const o of a.values()) if (o !== null) out.set(o, (out.get(o) ?? 0) + 1);
  return out;
}

/** Small deterministic PRNG so one generated seed describes a whole `current` map. */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** Shards, members, and a current map that names live members, dead members, nobody or is missing. */
const scenario = fc
  .record({
    shardCount: fc.integer({ min: 1, max: 300 }),
    memberCount: fc.integer({ min: 1, max: 40 }),
    seed: fc.integer(),
  })
  .map(({ shardCount, memberCount, seed }) => {
    const shards = shardNames(shardCount);
    const members = memberNames(memberCount);
    const dead = memberNames(5, "dead");
    const rnd = mulberry32(seed);
    const current = new Map<string, string | null>();
    for (const s of shards) {
      const r = rnd();
      const kind = r % 4;
      if (kind === 0) continue; // unknown shard: no entry
      if (kind === 1) current.set(s, null);
      else if (kind === 2) current.set(s, dead[r % dead.length]!);
      else current.set(s, members[(r >>> 2) % members.length]!);
    }
    return { shards, members, current };
  });

/** Fisher-Yates driven by fast-check's random source, so failures shrink and replay. */
function shuffled<T>(xs: readonly T[], keys: readonly number[]): T[] {
  const out = [...xs];
  for (let i = out.length - 1; i > 0; i--) {
    const j = keys[i % keys.length]! % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

describe("assignShards (properties)", () => {
  it("(a) assigns every shard exactly once, to a live member", () => {
    fc.assert(
      fc.property(scenario, ({ shards, members, current }) => {
        const a = assignShards(shards, equal(members), current);
        const live = new Set(members);
        expect(a.size).toBe(shards.length);
        const bad = shards.filter((s) => {
          const o = a.get(s);
          return o == null || !live.has(o);
        });
        expect(bad).toEqual([]);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it("(b) equal capacities: counts differ by at most 1 and match floor/ceil of S/N", () => {
    fc.assert(
      fc.property(scenario, fc.integer({ min: 1, max: 5 }), ({ shards, members, current }, cap) => {
        const a = assignShards(shards, equal(members, cap), current);
        const c = counts(a);
        const values = members.map((m) => c.get(m) ?? 0);
        const lo = Math.floor(shards.length / members.length);
        expect(Math.max(...values) - Math.min(...values)).toBeLessThanOrEqual(1);
        for (const v of values) {
          expect(v).toBeGreaterThanOrEqual(lo);
          expect(v).toBeLessThanOrEqual(Math.ceil(shards.length / members.length));
        }
        expect(values.reduce((x, y) => x + y, 0)).toBe(shards.length);
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it("(c) mixed capacities: each member's count is within 1 of S*cap/total", () => {
    fc.assert(
      fc.property(
        scenario,
        fc.array(fc.integer({ min: 1, max: 10 }), { minLength: 40, maxLength: 40 }),
        ({ shards, members, current }, caps) => {
          const ms = members.map((id, i) => ({ id, capacity: caps[i]! }));
          const total = ms.reduce((s, m) => s + m.capacity, 0);
          const c = counts(assignShards(shards, ms, current));
          for (const m of ms) {
            const ideal = (shards.length * m.capacity) / total;
            expect(Math.abs((c.get(m.id) ?? 0) - ideal)).toBeLessThan(1);
          }
        },
      ),
      { numRuns: NUM_RUNS },
    );
  });

  it("(d) keeps a shard with its live owner whenever that owner is not above its quota", () => {
    fc.assert(
      fc.property(scenario, ({ shards, members, current }) => {
        const ms = equal(members);
        const a = assignShards(shards, ms, current);
        const live = new Set(members);
        const currentCounts = new Map<string, number>();
        for (const s of shards) {
          const o = current.get(s);
          if (o != null && live.has(o)) currentCounts.set(o, (currentCounts.get(o) ?? 0) + 1);
        }
        const q = quotas(shards.length, ms, currentCounts);
        const movedAway = shards.filter((s) => {
          const o = current.get(s);
          return o != null && live.has(o) && (currentCounts.get(o) ?? 0) <= (q.get(o) ?? 0) && a.get(s) !== o;
        });
        expect(movedAway).toEqual([]);
        // An owner above its quota keeps exactly its quota of its own shards.
        const c = counts(a);
        for (const m of members) {
          const cur = currentCounts.get(m) ?? 0;
          const kept = shards.filter((s) => current.get(s) === m && a.get(s) === m).length;
          expect(kept).toBe(Math.min(cur, q.get(m)!));
          expect(c.get(m) ?? 0).toBe(q.get(m));
        }
      }),
      { numRuns: NUM_RUNS },
    );
  });

  it("(d) a join moves at most ceil(S/(N+1))+1 shards, all to the joiner", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 300 }),
        fc.integer({ min: 1, max: 40 }),
        fc.array(fc.integer({ min: 0, max: 1_000_000 }), { minLength: 1, maxLength: 50 }),
        // The joiner's id sorts first, last or in the middle of the incumbents.
        fc.constantFrom("a-joiner", "w999-joiner", "w0005"),
        (shardCount, n, keys, joiner) => {
          const shards = shardNames(shardCount);
          const members = memberNames(n);
          const before = assignShards(shuffled(shards, keys), equal(members), new Map());
          const after = assignShards(shards, equal([...members, joiner]), before);
          const moved = movedShards(before, after);
          expect(moved).toBeLessThanOrEqual(Math.ceil(shardCount / (n + 1)) + 1);
          const notToJoiner = shards.filter((s) => after.get(s) !== before.get(s) && after.get(s) !== joiner);
          expect(notToJoiner).toEqual([]);
          expect(moved).toBe(counts(after).get(joiner) ?? 0);
        },
      ),
      { numRuns: NUM_RUNS },
    );
  });

  it("(d) a leave moves only the leaver's shards", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 300 }),
        fc.integer({ min: 2, max: 40 }),
        fc.nat(),
        (shardCount, n, pick) => {
          const shards = shardNames(shardCount);
          const members = memberNames(n);
          const before = assignShards(shards, equal(members), new Map());
          const leaver = members[pick % n]!;
          const rest = members.filter((m) => m !== leaver);
          const after = assignShards(shards, equal(rest), before);
          const leaverShards = shards.filter((s) => before.get(s) === leaver);
          expect(movedShards(before, after)).toBe(leaverShards.length);
          const wrong = shards.filter((s) =>
            before.get(s) === leaver ? after.get(s) === leaver : after.get(s) !== before.get(s),
          );
          expect(wrong).toEqual([]);
          const c = counts(after);
          const values = rest.map((m) => c.get(m) ?? 0);
          expect(Math.max(...values) - Math.min(...values)).toBeLessThanOrEqual(1);
        },
      ),
      { numRuns: NUM_RUNS },
    );
  });

  it("(e) is deterministic: input order of shards and members does not matter", () => {
    fc.assert(
      fc.property(
        scenario,
        fc.array(fc.integer({ min: 0, max: 1_000_000 }), { minLength: 1, maxLength: 50 }),
        fc.array(fc.integer({ min: 1, max: 4 }), { minLength: 40, maxLength: 40 }),
        ({ shards, members, current }, keys, caps) => {
          const ms = members.map((id, i) => ({ id, capacity: caps[i]! }));
          const a = assignShards(shards, ms, current);
          const b = assignShards(shuffled(shards, keys), shuffled(ms, [...keys].reverse()), current);
          const canon = (m: Assignment): string => JSON.stringify([...m.entries()].sort());
          expect(b.size).toBe(a.size);
          expect(canon(b)).toBe(canon(a));
          // Pure: same inputs, same output.
          expect(canon(assignShards(shards, ms, current))).toBe(canon(a));
        },
      ),
      { numRuns: NUM_RUNS },
    );
  });

  it("(f) without members every shard maps to null", () => {
    fc.assert(
      fc.property(scenario, ({ shards, current }) => {
        const a = assignShards(shards, [], current);
        expect(a.size).toBe(shards.length);
        expect(shards.filter((s) => !a.has(s) || a.get(s) !== null)).toEqual([]);
      }),
      { numRuns: 100 },
    );
  });
});

describe("assignShards (examples)", () => {
  it("1024 shards over 64 workers: 16 each; a 65th worker moves at most ceil(1024/65)+1", () => {
    const shards = shardNames(1024);
    const workers = memberNames(64);
    const before = assignShards(shards, equal(workers), new Map());
    const c0 = counts(before);
    for (const w of workers) expect(c0.get(w)).toBe(16);

    const after = assignShards(shards, equal([...workers, "w064"]), before);
    const moved = movedShards(before, after);
    expect(moved).toBeLessThanOrEqual(Math.ceil(1024 / 65) + 1);
    expect(moved).toBe(15); // floor(1024/65) = 15, remainder goes to incumbents
    const c1 = counts(after);
    expect(c1.get("w064")).toBe(15);
    const values = [...c1.values()];
    expect(Math.max(...values) - Math.min(...values)).toBeLessThanOrEqual(1);
  });

  it("a member of capacity 2 gets twice the shards of a member of capacity 1", () => {
    const a = assignShards(
      shardNames(30),
      [
        { id: "big", capacity: 2 },
        { id: "small", capacity: 1 },
      ],
      new Map(),
    );
    const c = counts(a);
    expect(c.get("big")).toBe(20);
    expect(c.get("small")).toBe(10);
  });

  it("reassigns only the shards of a dead owner", () => {
    const shards = shardNames(6);
    const current = new Map<string, string | null>([
      ["p.0", "a"],
      ["p.1", "a"],
      ["p.2", "b"],
      ["p.3", "b"],
      ["p.4", "dead"],
      ["p.5", "dead"],
    ]);
    const a = assignShards(shards, equal(["a", "b", "c"]), current);
    expect(a.get("p.0")).toBe("a");
    expect(a.get("p.1")).toBe("a");
    expect(a.get("p.2")).toBe("b");
    expect(a.get("p.3")).toBe("b");
    expect(a.get("p.4")).toBe("c");
    expect(a.get("p.5")).toBe("c");
    // movedShards counts moves away from a previous owner, dead ones included.
    expect(movedShards(current, a)).toBe(2);
  });

  it("movedShards ignores shards that had no owner before", () => {
    const before = new Map<string, string | null>([["p.0", null]]);
    const after: Assignment = new Map([
      ["p.0", "a"],
      ["p.1", "b"],
    ]);
    expect(movedShards(before, after)).toBe(0);
    expect(movedShards(new Map([["p.1", "a"]]), after)).toBe(1);
  });

  it("quotas sum to the shard count and favour current owners for remainders", () => {
    const q = quotas(10, equal(["a", "b", "c"]), new Map([["c", 4]]));
    expect([...q.values()].reduce((x, y) => x + y, 0)).toBe(10);
    expect(q.get("c")).toBe(4);
    expect(q.get("a")).toBe(3);
    expect(q.get("b")).toBe(3);
    expect(quotas(5, [], new Map()).size).toBe(0);
  });
});
