/**
 * How a worker reads the assignment entries it hears (through the store's watch, and as the
 * coordinator's announcements): which ones count, and what each means for the lease it runs
 * on the shard. Pure: the worker runtime feeds it what it heard and does what it answers.
 */
import type { AssignmentEntry } from "../contract/ownership.js";

/** What the worker knows of a shard when an entry arrives. */
export interface KnownEntry {
  /** The last entry it accepted (null: the key was deleted; undefined: none heard yet). */
  entry: AssignmentEntry | null | undefined;
  /** The store revision of `entry` (0: none). */
  revision: number;
}

/**
 * Whether `next` (at `revision`) replaces what the worker knows. Entries are judged by epoch,
 * not only by revision: a write that watchers saw but the store then lost (a phantom, seen on
 * NATS node failures) leaves its revision to be reused by the next real write, which must not
 * be ignored. A late entry of the same epoch at an older revision is ignored: an `active`
 * overtaken by its own `revoking` would otherwise start a lease the worker has just released.
 * The same write heard twice (announced, then watched) counts once, and nothing older than the
 * lease running here (`heldEpoch`) counts at all.
 */
export function acceptEntry(
  known: KnownEntry,
  next: AssignmentEntry | null,
  revision: number,
  heldEpoch: number | undefined,
): boolean {
  const prev = known.entry;
  if (next && prev) {
    const older =
      next.epoch < prev.epoch
        ? revision <= known.revision
        : next.epoch === prev.epoch && revision < known.revision;
    if (older) return false;
  }
  if (revision === known.revision && sameEntry(prev, next)) return false;
  if (heldEpoch !== undefined && next && next.epoch < heldEpoch) return false;
  return true;
}

/** What an accepted entry asks of the worker's lease on the shard. */
export type EntryAction =
  /** Nothing to do. */
  | { type: "none" }
  /** Start a lease at `epoch`. */
  | { type: "start"; epoch: number }
  /** Stop the running lease without committing: the shard is another epoch's now. */
  | { type: "fence"; reason: string }
  /** Drain the running lease: commit its in-flight batch, then release. */
  | { type: "revoke" }
  /** Report as released a shard this worker was asked to give up but never started. */
  | { type: "release"; epoch: number };

/**
 * The action an accepted entry `e` asks of worker `self`, which runs a lease at `heldEpoch` on
 * the shard (undefined: none) and is `leaving` the cluster or not.
 *
 * A running lease is never confirmed by an entry: the entry may have been written long before it
 * arrives (the worker was paused, say), and the same epoch is re-stated whenever a move is
 * announced or called off. Heartbeat grants, timed from their sending, confirm leases.
 */
export function entryAction(
  self: string,
  e: AssignmentEntry | null,
  heldEpoch: number | undefined,
  leaving: boolean,
): EntryAction {
  const held = heldEpoch !== undefined;
  if (e && e.owner === self) {
    // A newer epoch for this worker starts once the old lease has stopped.
    if (held && heldEpoch < e.epoch)
      return { type: "fence", reason: `reassigned to self at epoch ${e.epoch}` };
    if (e.phase === "active") return !held && !leaving ? { type: "start", epoch: e.epoch } : { type: "none" };
    if (held) return { type: "revoke" };
    return { type: "release", epoch: e.epoch };
  }
  if (held && (!e || e.epoch > heldEpoch))
    return { type: "fence", reason: `shard now owned by ${e?.owner ?? "nobody"} at epoch ${e?.epoch}` };
  if (held && e && e.owner !== self) return { type: "revoke" };
  return { type: "none" };
}

/** What an accepted entry means for a hand-off this worker may be preparing. */
export type MoveAction =
  /** Prepare the lease of `epoch`: open its consumer while the owner still commits. */
  | { type: "prepare"; epoch: number }
  /** Call off any preparation. */
  | { type: "discard" }
  /** Leave things as they are. */
  | { type: "none" };

/**
 * An entry naming `self` as `next` announces a move here: the coordinator grants the shard at
 * `epoch + 1` once the owner has released, so that lease is prepared now (`preparedEpoch`: the
 * epoch already prepared, if any). Anything but such an entry or this worker's own active lease
 * calls a preparation off.
 */
export function moveAction(
  self: string,
  e: AssignmentEntry | null,
  leaving: boolean,
  preparedEpoch: number | undefined,
): MoveAction {
  if (e && e.next === self && e.owner !== self && !leaving) {
    const epoch = e.epoch + 1;
    return preparedEpoch === epoch ? { type: "none" } : { type: "prepare", epoch };
  }
  if (e && e.owner === self && e.phase === "active") return { type: "none" };
  return { type: "discard" };
}

export function sameEntry(a: AssignmentEntry | null | undefined, b: AssignmentEntry | null): boolean {
  if (!a || !b) return a === b;
  return (
    a.owner === b.owner &&
    a.epoch === b.epoch &&
    a.phase === b.phase &&
    (a.next ?? null) === (b.next ?? null) &&
    a.at === b.at
  );
}
