/**
 * A merge's branch (README "Merges"): marks each on-time record for the merge's table, which
 * the sink applies in the commit's transaction by the merge's policy (`SinkRow.merge`). A late
 * record is not applied (it waits for `sluice late reconcile`). With the merge's `key` field,
 * a record whose field is not the key it was published under is dead-lettered
 * (`MERGE_KEY_MISMATCH`): the merge's row per key must hold that key's records only.
 */
import type { MergeConfig } from "../../contract/config.js";
import { ErrorCode } from "../../contract/errors.js";
import { keep, type PipelineRecord, recordWith, reject, type Stage, type StageDecision } from "../stage.js";
import { getter } from "./rules-stage.js";

export class MergeStage implements Stage {
  readonly name = "merge";
  private readonly get: ((v: Record<string, unknown>) => unknown) | null;

  constructor(
    private readonly merge: MergeConfig,
    /** The branch's priority. */
    private readonly priority: number,
  ) {
    this.get = merge.key === undefined ? null : getter(merge.key);
  }

  process(batch: readonly PipelineRecord[]): StageDecision<PipelineRecord>[] {
    return batch.map((r) => {
      if (this.get) {
        const v = this.get(r.value);
        const text =
          typeof v === "string" ? v : typeof v === "number" || typeof v === "bigint" ? String(v) : null;
        if (text !== r.key)
          return reject<PipelineRecord>({
            ok: false,
            code: ErrorCode.MergeKeyMismatch,
            message: `merge ${this.merge.name}: field ${this.merge.key} is ${v === undefined ? "absent" : JSON.stringify(typeof v === "bigint" ? String(v) : v)}, not the key '${r.key}' the record was published under`,
          });
      }
      if (r.late !== undefined || r.eventTime === undefined) return keep(r);
      return keep(
        recordWith(r, r.value, r.lineage, r.dedupe, r.eventTime, r.late, {
          into: this.merge.name,
          policy: this.merge.policy,
          priority: this.priority,
          eventTime: r.eventTime,
        }),
      );
    });
  }
}
