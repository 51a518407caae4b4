/**
 * Deduplication by business key: this stage only names each record's business key and time
 * (`SinkRow.dedupe`); the sink decides, in the commit's transaction, against the marks it keeps
 * with the rows and the checkpoint (`core/sink-rules.ts`, `dedupeRows`). A mark is therefore
 * written exactly when its record is, so a fenced or failed commit leaves none, and a crash, a
 * pause or a shard move between two duplicates changes nothing.
 *
 * The time is the record's event time when its pipeline names one (the event-time stage runs
 * just before), else its stream time (when JetStream stored it); both are fixed at publish, so a
 * redelivery carries the same one. A record without a readable business key is rejected with
 * `DEDUPE_KEY_MISSING`: keeping it would let its duplicates through unseen.
 */
import type { DedupeConfig } from "../../contract/config.js";
import { ErrorCode } from "../../contract/errors.js";
import { keep, type PipelineRecord, recordWith, reject, type Stage, type StageDecision } from "../stage.js";
import { celEnvironment, getter } from "./rules-stage.js";

export class DedupeStage implements Stage {
  readonly name = "dedupe";
  /** The window the sink applies, ms (`CommitOptions.dedupeWindowMs`). */
  readonly dedupeWindowMs: number;
  private readonly keyOf: (value: Record<string, unknown>, key: string) => unknown;
  private readonly what: string;

  constructor(cfg: DedupeConfig) {
    this.dedupeWindowMs = cfg.window;
    if (cfg.key !== undefined) {
      const get = getter(cfg.key);
      this.keyOf = (v) => get(v);
      this.what = `field ${cfg.key}`;
    } else {
      const program = celEnvironment().parse(cfg.keyExpression!);
      this.keyOf = (record, key) => {
        try {
          return program({ record, key });
        } catch {
          return undefined;
        }
      };
      this.what = `expression ${cfg.keyExpression}`;
    }
  }

  process(batch: readonly PipelineRecord[]): StageDecision<PipelineRecord>[] {
    return batch.map((r) => {
      const k = this.keyOf(r.value, r.key);
      const text =
        typeof k === "string" ? k : typeof k === "number" || typeof k === "bigint" ? String(k) : null;
      if (text === null || text === "")
        return reject<PipelineRecord>({
          ok: false,
          code: ErrorCode.DedupeKeyMissing,
          message: `dedupe: no business key (${this.what} is ${k === undefined ? "absent" : typeof k})`,
        });
      const at = r.eventTime ?? r.message.timestampMs ?? 0;
      return keep(recordWith(r, r.value, r.lineage, { key: text, at }));
    });
  }
}
