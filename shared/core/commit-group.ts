/**
 * Which waiting commits share the next sink transaction (group commit, `PostgresSink.commit`):
 * a pure decision over the queue of one worker's commits, also used by the simulator.
 */
import type { ShardRef } from "../contract/ownership.js";
import type { CommitOptions, CommitResult, SinkRow } from "../contract/ports.js";

/** Most rows one group's transaction takes (a commit larger than this goes alone). */
export const GROUP_MAX_ROWS = 5_000;

/** A commit as the grouping sees it. */
export interface GroupableCommit {
  ref: ShardRef;
  rows: readonly SinkRow[];
  opts: CommitOptions;
}

/** One shard's commit waiting for its group, answered when the group's transaction ends. */
export interface WaitingCommit extends GroupableCommit {
  epoch: number;
  worker: string;
  rows: SinkRow[];
  lastSeq: number;
  resolve(r: CommitResult): void;
  reject(err: unknown): void;
}

/**
 * Whether a commit takes locks beyond its own shard's rows (dedupe marks, merge keys), each
 * statement in key order but not in one order across shards: such a commit goes alone, so two
 * groups never take those locks in opposite orders and deadlock.
 */
export const goesAlone = (q: GroupableCommit): boolean =>
  q.opts.dedupeWindowMs !== undefined || q.rows.some((r) => r.merge !== undefined);

const shardOf = (r: ShardRef): string => `${r.pipeline}\u0000${r.shard}`;

/**
 * Takes the next group off `waiting` (oldest first): at most one commit per shard and
 * `GROUP_MAX_ROWS` rows, always at least one commit, and a commit that `goesAlone` by itself.
 * The rest stay waiting, in order.
 */
export function takeGroup<Q extends GroupableCommit>(waiting: Q[]): Q[] {
  const group: Q[] = [];
  const rest: Q[] = [];
  const shards = new Set<string>();
  let rows = 0;
  let sealed = false;
  for (const q of waiting) {
    const k = shardOf(q.ref);
    const alone = goesAlone(q);
    if (group.length > 0 && (sealed || alone || shards.has(k) || rows + q.rows.length > GROUP_MAX_ROWS)) {
      rest.push(q);
      continue;
    }
    group.push(q);
    shards.add(k);
    rows += q.rows.length;
    sealed = alone;
  }
  waiting.splice(0, waiting.length, ...rest);
  return group;
}
