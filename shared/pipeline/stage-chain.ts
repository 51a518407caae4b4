/**
 * Runs a batch through the decode stage and the pipeline's later stages, in order, and sorts
 * the outcome into what the commit needs: rows for the sink (kept and routed records) and
 * dead letters (rejected ones, with the stage that rejected them).
 */
import type { Rejection } from "../contract/codec.js";
import type { PipelineState, SinkRow, SourceMessage } from "../contract/ports.js";
import type { PipelineRecord, Stage, StageContext, StageDecision } from "./stage.js";

export interface Rejected {
  message: SourceMessage;
  rejection: Rejection;
  /** Name of the stage that rejected the record. */
  stage: string;
}

export interface ChainOutcome {
  /** Kept records, then routed ones with their `output`, each in batch order. */
  rows: SinkRow[];
  rejected: Rejected[];
  /** How many of `rows` a stage routed to a side output. */
  routed: number;
}

/** A record as a row: the record itself (its extra fields are never stored) or, routed, a copy. */
const asRow = (r: PipelineRecord, output?: string): SinkRow => (output === undefined ? r : { ...r, output });

export class StageChain {
  constructor(
    private readonly decode: Stage<SourceMessage, PipelineRecord>,
    private readonly stages: readonly Stage[] = [],
  ) {}

  /** Whether a stage pins inputs with the checkpoint (see `Stage.pin`). */
  get pinning(): boolean {
    return this.stages.some((s) => s.pin !== undefined);
  }

  /** The dedupe window the sink applies to this chain's rows, ms (undefined: no dedupe). */
  get dedupeWindowMs(): number | undefined {
    return this.stages.find((s) => s.dedupeWindowMs !== undefined)?.dedupeWindowMs;
  }

  /** Stage names in order, decode first. */
  get names(): string[] {
    return [this.decode.name, ...this.stages.map((s) => s.name)];
  }

  /**
   * What the stages want pinned before the next batch (see `Stage.pin`): `ctx.state` with their
   * changes, or null when none wants a change.
   */
  async pin(ctx: StageContext): Promise<PipelineState | null> {
    let next: Record<string, string | number | boolean> | null = null;
    for (const stage of this.stages) {
      const want = await stage.pin?.(ctx);
      if (want) {
        next ??= { ...ctx.state };
        Object.assign(next, want);
      }
    }
    return next;
  }

  async run(batch: readonly SourceMessage[], ctx: StageContext): Promise<ChainOutcome> {
    const rejected: Rejected[] = [];
    const routedRows: SinkRow[] = [];
    const first = await this.decode.process(batch, ctx);
    checkCount(this.decode, first, batch.length);
    let records: PipelineRecord[] = [];
    for (let i = 0; i < first.length; i++) {
      const d = first[i]!;
      if (d.kind === "keep") records.push(d.record);
      else if (d.kind === "reject")
        rejected.push({ message: batch[i]!, rejection: d.rejection, stage: this.decode.name });
      else routedRows.push(asRow(d.record, d.output));
    }
    for (const stage of this.stages) {
      if (records.length === 0) break;
      const decisions = await stage.process(records, ctx);
      checkCount(stage, decisions, records.length);
      const next: PipelineRecord[] = [];
      for (let i = 0; i < decisions.length; i++) {
        const d = decisions[i]!;
        if (d.kind === "keep") next.push(d.record);
        else if (d.kind === "reject")
          rejected.push({ message: records[i]!.message, rejection: d.rejection, stage: stage.name });
        else routedRows.push(asRow(d.record, d.output));
      }
      records = next;
    }
    const rows: SinkRow[] = routedRows.length === 0 ? records : [...records, ...routedRows];
    return { rows, rejected, routed: routedRows.length };
  }
}

/** A stage that lost or invented a decision is a bug in it: the batch must not be committed. */
function checkCount(stage: { name: string }, decisions: readonly StageDecision<unknown>[], n: number): void {
  if (decisions.length !== n)
    throw new Error(`stage ${stage.name} returned ${decisions.length} decisions for ${n} records`);
}
