/**
 * `sluice verify`: the exactly-once check, Jepsen style. Sorts record ids into attempted,
 * acknowledged and indeterminate (timed out or failed) from the ack log, and compares them
 * with the rows in the sink:
 *   lost       = acknowledged and not in the sink
 *   duplicated = more than one row
 *   unexpected = in the sink but never attempted
 * An indeterminate publish may be absent, but never duplicated. Where the sink keeps an audit
 * row per commit (`sluice_batches`), the rows those rows say were written must be the rows the
 * table holds (both are written in one transaction; for append tables without side outputs).
 */
import { readFileSync } from "node:fs";
import type { AuditedBatch, CommittedRow, SinkInspector } from "../../shared/contract/ports.js";

export interface VerifyReport {
  pipeline: string;
  attempted: number;
  acknowledged: number;
  indeterminate: number;
  committed: number;
  rows: number;
  lost: number;
  duplicated: number;
  unexpected: number;
  indeterminate_committed: number;
  /** Records committed before an earlier record of the same key (by source sequence). */
  order_violations: number;
  /** The audit table's account of the pipeline; null when the sink keeps none (or none yet). */
  audit: {
    batches: number;
    /** Rows the batches say they wrote; equals `rows` when the audit agrees with the table. */
    rows: number;
    dead_lettered: number;
    deduplicated: number;
  } | null;
  examples: { lost: string[]; duplicated: string[]; unexpected: string[] };
  ok: boolean;
}

export function readAckLog(path: string): Map<string, "acked" | "failed" | "timeout"> {
  const out = new Map<string, "acked" | "failed" | "timeout">();
  for (const line of readFileSync(path, "utf8").split("\n")) {
    if (!line.trim()) continue;
    const r = JSON.parse(line) as { id: string; status: "acked" | "failed" | "timeout" };
    // If a record was logged twice, an ack wins.
    if (out.get(r.id) !== "acked") out.set(r.id, r.status);
  }
  return out;
}

/** Records committed out of order: per key, rows in commit order must have increasing sequences. */
export function orderViolations(rows: readonly CommittedRow[]): number {
  const lastSeq = new Map<string, number>();
  let n = 0;
  for (const r of [...rows].sort((a, b) => a.order - b.order)) {
    const prev = lastSeq.get(r.key);
    if (prev !== undefined && r.sourceSeq <= prev) n++;
    lastSeq.set(r.key, r.sourceSeq);
  }
  return n;
}

export async function verify(
  sink: SinkInspector,
  pipeline: string,
  ackLogPath: string,
): Promise<VerifyReport> {
  const log = readAckLog(ackLogPath);
  const rows = await sink.rows(pipeline);
  const batches = (await sink.batches?.(pipeline)) ?? [];
  const inSink = new Map<string, number>();
  for (const r of rows) inSink.set(r.recordId, (inSink.get(r.recordId) ?? 0) + 1);
  const r: VerifyReport = {
    pipeline,
    attempted: log.size,
    acknowledged: 0,
    indeterminate: 0,
    committed: inSink.size,
    rows: rows.length,
    lost: 0,
    duplicated: 0,
    unexpected: 0,
    indeterminate_committed: 0,
    order_violations: orderViolations(rows),
    audit: batches.length === 0 ? null : auditOf(batches),
    examples: { lost: [], duplicated: [], unexpected: [] },
    ok: false,
  };
  const note = (kind: "lost" | "duplicated" | "unexpected", id: string): void => {
    r[kind]++;
    if (r.examples[kind].length < 10) r.examples[kind].push(id);
  };
  for (const [id, status] of log) {
    const n = inSink.get(id) ?? 0;
    if (status === "acked") {
      r.acknowledged++;
      if (n === 0) note("lost", id);
    } else {
      r.indeterminate++;
      if (n > 0) r.indeterminate_committed++;
    }
    if (n > 1) note("duplicated", id);
  }
  for (const id of inSink.keys()) if (!log.has(id)) note("unexpected", id);
  const auditAgrees = r.audit === null || r.audit.rows === r.rows;
  r.ok = r.lost === 0 && r.duplicated === 0 && r.unexpected === 0 && r.order_violations === 0 && auditAgrees;
  return r;
}

/** What a pipeline's audit rows add up to (`VerifyReport.audit`). */
export function auditOf(batches: readonly AuditedBatch[]): NonNullable<VerifyReport["audit"]> {
  const a = { batches: batches.length, rows: 0, dead_lettered: 0, deduplicated: 0 };
  for (const b of batches) {
    a.rows += b.rows;
    a.dead_lettered += b.deadLettered;
    a.deduplicated += b.deduplicated;
  }
  return a;
}

export function formatVerify(r: VerifyReport): string {
  return [
    `pipeline ${r.pipeline}: attempted ${r.attempted}, acknowledged ${r.acknowledged}, indeterminate ${r.indeterminate} (${r.indeterminate_committed} committed)`,
    `sink: ${r.rows} rows, ${r.committed} distinct records`,
    `lost ${r.lost}, duplicated ${r.duplicated}, unexpected ${r.unexpected}, per-key order violations ${r.order_violations}`,
    ...(r.audit
      ? [
          `audit: ${r.audit.batches} batches wrote ${r.audit.rows} rows (${r.audit.rows === r.rows ? "as the table holds" : `the table holds ${r.rows}`}), dead-lettered ${r.audit.dead_lettered}, deduplicated ${r.audit.deduplicated}`,
        ]
      : []),
    ...(r.examples.lost.length ? [`  lost e.g. ${r.examples.lost.join(", ")}`] : []),
    ...(r.examples.duplicated.length ? [`  duplicated e.g. ${r.examples.duplicated.join(", ")}`] : []),
    ...(r.examples.unexpected.length ? [`  unexpected e.g. ${r.examples.unexpected.join(", ")}`] : []),
    r.ok ? "EXACTLY-ONCE: OK" : "EXACTLY-ONCE: VIOLATED",
  ].join("\n");
}

/** Rows the sink holds for a pipeline (for waiting until a load has drained); 0 when unknown. */
export function countCommitted(sink: SinkInspector, pipeline: string): Promise<number> {
  return sink.rowCount(pipeline).catch(() => 0);
}
