/**
 * A pipeline's stages after decode, from its config: the schema (when it names a subject), its
 * quality rules, its transform stages, and the event time (when it names one) before dedupe,
 * which goes by it. Built once per process; each stage serves every shard of the pipeline.
 */
import type { MergeConfig, PipelineConfig } from "../contract/config.js";
import { ErrorCode, SluiceError } from "../contract/errors.js";
import type { RuleCounts } from "../contract/ownership.js";
import { addRuleCounts } from "../core/stage-health.js";
import type { Stage } from "./stage.js";
import { DedupeStage } from "./stages/dedupe-stage.js";
import { EnrichStage, type ReferenceTables } from "./stages/enrich-stage.js";
import { EventTimeStage } from "./stages/event-time-stage.js";
import { MergeStage } from "./stages/merge-stage.js";
import { type NormaliseOptions, NormaliseStage } from "./stages/normalise-stage.js";
import { type RulesReport, RulesStage } from "./stages/rules-stage.js";
import { type SchemaSource, SchemaStage } from "./stages/schema-stage.js";

export interface StageDeps {
  /** The schema registry; needed when a pipeline names `schema.subject`. */
  schemas?: SchemaSource;
  /** The reference tables; needed when a pipeline enriches. */
  references?: ReferenceTables;
  /** Where the normalise steps read pseudonymisation keys (default: files and the environment). */
  normalise?: NormaliseOptions;
  /** Clock for the schema stage's refresh, ms. */
  now(): number;
  /** A batch's quality-rule outcomes. */
  onRules?(r: RulesReport): void;
  /** The merge the pipeline is a branch of (`mergeOf`), if any. */
  merge?: MergeConfig;
}

export function pipelineStages(p: PipelineConfig, d: StageDeps): Stage[] {
  const stages: Stage[] = [];
  if (p.schema) {
    if (!d.schemas)
      throw new SluiceError(
        ErrorCode.InvalidConfig,
        `pipeline '${p.name}' names a schema but no registry is open`,
      );
    stages.push(new SchemaStage(p.schema.subject, d.schemas, { now: d.now }));
  }
  if (p.rules.some((r) => r.mode !== "off")) stages.push(new RulesStage(p.name, p.rules, d.onRules));
  const eventTime = p.eventTime === undefined ? null : new EventTimeStage(p.eventTime, p.lateness?.allowed);
  const merge = d.merge && p.merge ? new MergeStage(d.merge, p.merge.priority) : null;
  // Event time (and the merge, which goes by it) just before dedupe, else last.
  const timed = ([eventTime, merge] as Array<Stage | null>).filter((s): s is Stage => s !== null);
  for (const s of p.stages) {
    if ("dedupe" in s) stages.push(...timed);
    if ("normalise" in s) stages.push(new NormaliseStage(s.normalise, d.normalise));
    else if ("enrich" in s) {
      if (!d.references)
        throw new SluiceError(
          ErrorCode.InvalidConfig,
          `pipeline '${p.name}' enriches from table "${s.enrich.table}" but no reference tables are open`,
        );
      stages.push(new EnrichStage(s.enrich, d.references, { now: d.now }));
    } else stages.push(new DedupeStage(s.dedupe));
  }
  if (timed.length > 0 && !stages.includes(timed[0]!)) stages.push(...timed);
  return stages;
}

/** Quality-rule counts summed over batches, `pipeline.rule` -> counts (for heartbeats and status). */
export class RuleTally {
  private readonly counts: Record<string, RuleCounts> = {};

  add(r: RulesReport): void {
    for (const [rule, c] of Object.entries(r.counts)) addRuleCounts(this.counts, `${r.pipeline}.${rule}`, c);
  }

  snapshot(): Record<string, RuleCounts> {
    return this.counts;
  }
}
