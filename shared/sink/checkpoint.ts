import type { Checkpoint, CommitOptions } from "../ports.js";

/**
 * The checkpoint after a commit at `epoch` whose batch ended at `lastSeq`: the sequence never
 * moves back, and the fingerprint follows the sequence (a reconciliation batch that ends below
 * the checkpoint keeps the checkpoint's own). Shared by every `Sink` implementation.
 */
export function advanceCheckpoint(
  before: Checkpoint,
  epoch: number,
  lastSeq: number,
  opts: CommitOptions,
): Checkpoint {
  const moved = lastSeq >= before.seq;
  const fingerprint = moved && opts.fingerprint !== undefined ? opts.fingerprint : before.fingerprint;
  return {
    epoch,
    seq: moved ? lastSeq : before.seq,
    ...(fingerprint === undefined ? {} : { fingerprint }),
  };
}
