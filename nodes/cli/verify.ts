/**
 * `sluice verify`: the exactly-once check, Jepsen style. Sorts record ids into attempted,
 * acknowledged and indeterminate (timed out or failed) from the ack log, and compares them
 * with the rows in the sink:
 *   lost       = acknowledged and not in the sink
 *   duplicated = more than one row
 *   unexpected = in the sink but never attempted
 * An indeterminate publish may be absent, but never duplicated.
 */
import { readFileSync } from "node:fs";
import Database from "better-sqlite3";

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

export function verify(sinkPath: string, pipeline: string, ackLogPath: string): VerifyReport {
  const log = readAckLog(ackLogPath);
  const db = new Database(sinkPath, { readonly: true, fileMustExist: true });
  const table = `"${pipeline.replaceAll('"', '""')}"`;
  let counts: Array<{ record_id: string; n: number }>;
  let orderViolations: number;
  try {
    counts = db.prepare(`SELECT record_id, COUNT(*) AS n FROM ${table} GROUP BY record_id`).all() as Array<{
      record_id: string;
      n: number;
    }>;
    // Per key, rows in commit order must have increasing source sequences.
    orderViolations = (
      db
        .prepare(
          `SELECT COUNT(*) AS n FROM (SELECT source_seq, LAG(source_seq) OVER (PARTITION BY key ORDER BY row_id) AS prev
           FROM ${table}) WHERE prev IS NOT NULL AND source_seq <= prev`,
        )
        .get() as { n: number }
    ).n;
  } finally {
    db.close();
  }
  const inSink = new Map(counts.map((c) => [c.record_id, c.n]));
  const r: VerifyReport = {
    pipeline,
    attempted: log.size,
    acknowledged: 0,
    indeterminate: 0,
    committed: inSink.size,
    rows: counts.reduce((s, c) => s + c.n, 0),
    lost: 0,
    duplicated: 0,
    unexpected: 0,
    indeterminate_committed: 0,
    order_violations: orderViolations,
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
  r.ok = r.lost === 0 && r.duplicated === 0 && r.unexpected === 0 && r.order_violations === 0;
  return r;
}

export function formatVerify(r: VerifyReport): string {
  return [
    `pipeline ${r.pipeline}: attempted ${r.attempted}, acknowledged ${r.acknowledged}, indeterminate ${r.indeterminate} (${r.indeterminate_committed} committed)`,
    `sink: ${r.rows} rows, ${r.committed} distinct records`,
    `lost ${r.lost}, duplicated ${r.duplicated}, unexpected ${r.unexpected}, per-key order violations ${r.order_violations}`,
    ...(r.examples.lost.length ? [`  lost e.g. ${r.examples.lost.join(", ")}`] : []),
    ...(r.examples.duplicated.length ? [`  duplicated e.g. ${r.examples.duplicated.join(", ")}`] : []),
    ...(r.examples.unexpected.length ? [`  unexpected e.g. ${r.examples.unexpected.join(", ")}`] : []),
    r.ok ? "EXACTLY-ONCE: OK" : "EXACTLY-ONCE: VIOLATED",
  ].join("\n");
}

/** Rows in the sink whose record id is in `ids` (for waiting until a load has drained). */
export function countCommitted(sinkPath: string, pipeline: string): number {
  const db = new Database(sinkPath, { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare(`SELECT COUNT(*) AS n FROM "${pipeline.replaceAll('"', '""')}"`).get() as {
      n: number;
    };
    return row.n;
  } catch {
    return 0;
  } finally {
    db.close();
  }
}
