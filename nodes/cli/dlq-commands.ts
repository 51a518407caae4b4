/**
 * `sluice dlq list|show|replay`: the dead letters of a running cluster (`--dir D` finds it
 * through `D/cluster.json`; `--servers` names any NATS cluster). Replay is idempotent per entry:
 * see `shared/adapters/nats/dead-letter-store.ts`.
 */
import type { Command } from "commander";
import { InvalidArgumentError } from "commander";
import {
  type DeadLetterFilter,
  DeadLetterStore,
  type DeadLetterSummary,
  type ReplayReport,
  viewPayload,
} from "../../shared/adapters/nats/dead-letter-store.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import { Headers } from "../../shared/contract/wire.js";
import { connectTarget } from "./cluster-file.js";
import { intOption } from "./int-option.js";

interface Target {
  dir: string;
  servers?: string;
}

const SINCE_FORMS = "an ISO-8601 time (2026-05-01T12:00:00Z) or a duration (30m, 2h, 1h30m, 7d)";
const unitMs: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * The cutoff `--since` names, ms since the epoch: an ISO-8601 time (`2026-05-01`,
 * `2026-05-01T12:00:00Z`), or a duration back from `nowMs` in whole ms, s, m, h or d, which may
 * be combined (`90s`, `30m`, `1h30m`, `7d`).
 */
export function parseSince(text: string, nowMs: number): number {
  const t = text.trim();
  if (/^(\d+(ms|s|m|h|d))+$/.test(t)) {
    let ms = 0;
    for (const [, n, unit] of t.matchAll(/(\d+)(ms|s|m|h|d)/g)) ms += Number(n) * unitMs[unit!]!;
    return nowMs - ms;
  }
  if (/^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/.test(t)) {
    const ms = Date.parse(t);
    if (Number.isFinite(ms)) return ms;
  }
  throw new SluiceError(ErrorCode.InvalidConfig, `--since ${text}: expected ${SINCE_FORMS}`);
}

const sinceOption = (v: string): number => {
  try {
    return parseSince(v, Date.now());
  } catch {
    // commander names the option and the value.
    throw new InvalidArgumentError(`expected ${SINCE_FORMS}`);
  }
};

async function withStore<T>(o: Target, fn: (s: DeadLetterStore) => Promise<T>): Promise<T> {
  const { nc, servers } = await connectTarget(o, "admin", "sluice-dlq");
  try {
    return await fn(new DeadLetterStore(nc, Math.min(3, servers.length)));
  } finally {
    await nc.close();
  }
}

/** `--pipeline P`, or every pipeline with a dead-letter stream. */
async function pipelinesOf(store: DeadLetterStore, pipeline: string | undefined): Promise<string[]> {
  return pipeline === undefined ? store.pipelines() : [pipeline];
}

const filterOf = (o: { code?: string; since?: number }): DeadLetterFilter => ({
  ...(o.code === undefined ? {} : { code: o.code }),
  ...(o.since === undefined ? {} : { sinceMs: o.since }),
});

function formatSummary(s: DeadLetterSummary, filter: DeadLetterFilter): string {
  const which = [
    filter.code === undefined ? "" : ` with code ${filter.code}`,
    filter.sinceMs === undefined ? "" : ` since ${new Date(filter.sinceMs).toISOString()}`,
  ].join("");
  if (s.total === 0) return `${s.pipeline} (${s.stream}): no dead letters${which}`;
  const lines = [`${s.pipeline} (${s.stream}): ${s.total} dead letter${s.total === 1 ? "" : "s"}${which}`];
  for (const [code, n] of Object.entries(s.byCode)) lines.push(`  ${code.padEnd(24)} ${n}`);
  if (s.sample.length > 0) {
    lines.push(`  newest ${s.sample.length}:`);
    lines.push(
      `  ${"seq".padEnd(8)} ${"time".padEnd(24)} ${"code".padEnd(20)} ${"stage".padEnd(8)} ${"shard".padEnd(5)} ${"source_seq".padEnd(10)} ${"key".padEnd(12)} ${"record_id".padEnd(20)} message`,
    );
    for (const e of s.sample) {
      const cell = (v: string | number | null, w: number) => String(v ?? "-").padEnd(w);
      lines.push(
        `  ${cell(e.seq, 8)} ${cell(e.time, 24)} ${cell(e.code, 20)} ${cell(e.stage, 8)} ${cell(e.shard, 5)} ${cell(e.sourceSeq, 10)} ${cell(e.key, 12)} ${cell(e.recordId, 20)} ${e.message}`,
      );
    }
  }
  return lines.join("\n");
}

function formatReplay(r: ReplayReport): string {
  const parts = [`replayed ${r.replayed}`, `skipped ${r.alreadyReplayed} already replayed`];
  if (r.duplicates > 0) parts.push(`skipped ${r.duplicates} duplicate dead letters`);
  if (r.unreplayable.length > 0) parts.push(`${r.unreplayable.length} not replayable`);
  const lines = [`${r.pipeline}: ${r.matched} matching, ${parts.join(", ")}`];
  for (const u of r.unreplayable) lines.push(`  seq ${u.seq}: ${u.reason}`);
  return lines.join("\n");
}

export function addDlqCommands(program: Command): void {
  const dlq = program
    .command("dlq")
    .description("dead letters: counts by error code, one entry in full, replay into the pipeline");
  const target = (c: Command): Command =>
    c
      .option("--dir <dir>", "cluster directory", ".sluice")
      .option("--servers <urls>", "NATS servers, comma-separated (instead of --dir)");

  target(dlq.command("list"))
    .description("dead letters per pipeline: how many per error code, and the newest few")
    .option("--pipeline <p>", "only this pipeline (default: every pipeline with a dead-letter stream)")
    .option("--code <c>", "only this error code")
    .option(
      "--since <t>",
      "only those dead-lettered since an ISO-8601 time or within a duration (30m, 2h)",
      sinceOption,
    )
    .option("--sample <n>", "entries shown per pipeline", intOption("--sample", 0), 5)
    .option("--json", "JSON output")
    .action(
      async (
        o: Target & { pipeline?: string; code?: string; since?: number; sample: number; json?: boolean },
      ) => {
        const filter = filterOf(o);
        await withStore(o, async (store) => {
          const summaries: DeadLetterSummary[] = [];
          for (const p of await pipelinesOf(store, o.pipeline))
            summaries.push(await store.summary(p, filter, o.sample));
          if (o.json) console.log(JSON.stringify(summaries, null, 2));
          else if (summaries.length === 0) console.log("no dead-letter streams");
          else console.log(summaries.map((s) => formatSummary(s, filter)).join("\n\n"));
        });
      },
    );

  target(dlq.command("show"))
    .description("one dead letter in full as JSON: every header, the payload, its replay marker")
    .requiredOption("--seq <n>", "sequence in the dead-letter stream", intOption("--seq", 1))
    .option("--pipeline <p>", "pipeline (default: the only one with a dead-letter stream)")
    .action(async (o: Target & { seq: number; pipeline?: string }) => {
      await withStore(o, async (store) => {
        let pipeline = o.pipeline;
        if (pipeline === undefined) {
          const all = await store.pipelines();
          if (all.length !== 1) {
            throw new SluiceError(
              ErrorCode.InvalidConfig,
              all.length === 0
                ? "no dead-letter streams"
                : `dead letters of several pipelines (${all.join(", ")}): name one with --pipeline`,
            );
          }
          pipeline = all[0]!;
        }
        const e = await store.entry(pipeline, o.seq);
        if (!e)
          throw new SluiceError(ErrorCode.InvalidConfig, `no dead letter ${o.seq} in ${pipeline}'s stream`);
        const payload = viewPayload(e.data ?? new Uint8Array(), e.headers[Headers.contentType]);
        console.log(
          JSON.stringify(
            {
              pipeline: e.pipeline,
              seq: e.seq,
              subject: e.subject,
              time: new Date(e.timeMs).toISOString(),
              code: e.code,
              stage: e.stage ?? null,
              message: e.message,
              shard: e.shard ?? null,
              sourceSubject: e.sourceSubject ?? null,
              sourceSeq: e.sourceSeq ?? null,
              key: e.key ?? null,
              recordId: e.recordId ?? null,
              headers: e.headers,
              size: e.data?.length ?? 0,
              payloadFormat: payload.format,
              ...(payload.format === "bytes"
                ? { payloadHex: payload.hex, payloadBase64: payload.base64 }
                : { payload: payload.value }),
              replay: await store.marker(pipeline, e.seq),
            },
            null,
            2,
          ),
        );
      });
    });

  target(dlq.command("replay"))
    .description(
      "publish matching dead letters again to ingest.<pipeline>.<key> with their original bytes, headers and record id; each entry at most once, however often this runs",
    )
    .option("--pipeline <p>", "only this pipeline (default: every pipeline with a dead-letter stream)")
    .option("--code <c>", "only this error code")
    .option(
      "--since <t>",
      "only those dead-lettered since an ISO-8601 time or within a duration (30m, 2h)",
      sinceOption,
    )
    .option("--json", "JSON output")
    .action(async (o: Target & { pipeline?: string; code?: string; since?: number; json?: boolean }) => {
      const filter = filterOf(o);
      await withStore(o, async (store) => {
        const reports: ReplayReport[] = [];
        for (const p of await pipelinesOf(store, o.pipeline)) {
          const r = await store.replay(p, filter);
          reports.push(r);
          if (!o.json) console.log(formatReplay(r));
        }
        if (o.json) console.log(JSON.stringify(reports, null, 2));
        else if (reports.length === 0) console.log("no dead-letter streams");
      });
    });
}
