/**
 * Event time and lateness. The stage reads each record's event time (`eventTime`: milliseconds
 * since the epoch, a CBOR integer of any width, or ISO-8601 text) and, with `lateness`, marks a
 * record late when its event time is strictly below the shard's watermark in force when the
 * record is reached: W = (the highest event time among the records before it in the shard's
 * stream order) − allowed. A shard's first record is never late.
 *
 * The highest event time is state committed with the shard's checkpoint (`EVENT_TIME_MAX_KEY`,
 * through `StageContext.next`), in the same transaction as the batch's rows: a redelivery, or the
 * shard's next owner, starts from the same value and classifies every record exactly as before.
 * Nothing here reads the wall clock, so an idle shard holds its watermark and stalls nothing.
 */
import { ErrorCode } from "../../contract/errors.js";
import { EVENT_TIME_MAX_KEY } from "../../core/merge-convergence.js";
import {
  keep,
  type PipelineRecord,
  recordWith,
  reject,
  type Stage,
  type StageContext,
  type StageDecision,
} from "../stage.js";
import { MAX_MS, MIN_MS, parseIso } from "./normalise-stage.js";
import { getter } from "./rules-stage.js";

// Defined in the core, which reads it from checkpoints to compute merges' convergence.
export { EVENT_TIME_MAX_KEY };

/** The event time `v` names, ms since the epoch, or why it names none. */
export function eventTimeOf(v: unknown): number | string {
  let ms: number;
  if (typeof v === "number") {
    if (!Number.isFinite(v)) return `${v} is not a time`;
    ms = Math.floor(v);
  } else if (typeof v === "bigint") {
    if (v < BigInt(MIN_MS) || v > BigInt(MAX_MS)) return `${v} is out of range (years 0000 to 9999)`;
    ms = Number(v);
  } else if (typeof v === "string") {
    const parsed = parseIso(v);
    if (parsed === null)
      return `${JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v)} is not ISO-8601 text`;
    ms = parsed;
  } else if (v === undefined) return "absent";
  else return `${v === null ? "null" : typeof v} is not a number of milliseconds nor ISO-8601 text`;
  if (ms < MIN_MS || ms > MAX_MS) return `${v} is out of range (years 0000 to 9999)`;
  return ms === 0 ? 0 : ms; // never -0
}

export class EventTimeStage implements Stage {
  readonly name = "event-time";
  private readonly get: (v: Record<string, unknown>) => unknown;
  /**
   * Shard -> highest event time processed, when the watermark is kept in this process instead of
   * with the checkpoint: the simulator's unsafe variant (`SafetySwitches.watermarkInCheckpoint`),
   * as an engine that does not checkpoint its watermarks behaves. Null: kept with the checkpoint.
   */
  private readonly inMemory: Map<number, number> | null;

  constructor(
    private readonly field: string,
    /** Allowed lateness, ms; undefined: event times are read, no record is late. */
    private readonly allowedMs: number | undefined,
    opts: { watermarkInCheckpoint?: boolean } = {},
  ) {
    this.get = getter(field);
    this.inMemory = opts.watermarkInCheckpoint === false ? new Map() : null;
  }

  process(batch: readonly PipelineRecord[], ctx: StageContext): StageDecision<PipelineRecord>[] {
    const stored = this.inMemory ? this.inMemory.get(ctx.ref.shard) : ctx.state[EVENT_TIME_MAX_KEY];
    let max = typeof stored === "number" ? stored : null;
    const allowed = this.allowedMs;
    const out = batch.map((r): StageDecision<PipelineRecord> => {
      const t = eventTimeOf(this.get(r.value));
      if (typeof t === "string")
        return reject({
          ok: false,
          code: ErrorCode.EventTimeInvalid,
          message: `event time ${this.field}: ${t}`,
        });
      let late: PipelineRecord["late"];
      // A redelivery below the checkpoint moves nothing (see `StageContext.committedSeq`).
      const redelivered = ctx.committedSeq !== undefined && r.sourceSeq <= ctx.committedSeq;
      if (allowed !== undefined && !redelivered) {
        const watermark = max === null ? null : max - allowed;
        if (watermark !== null && t < watermark) late = { eventTime: t, watermark };
        if (max === null || t > max) max = t;
      }
      return keep(recordWith(r, r.value, r.lineage, r.dedupe, t, late));
    });
    if (allowed !== undefined && max !== null) {
      if (this.inMemory) this.inMemory.set(ctx.ref.shard, max);
      else if (ctx.next) ctx.next[EVENT_TIME_MAX_KEY] = max;
    }
    return out;
  }
}
