/**
 * `sluice status --watch`: the status view redrawn in place every interval, with records/s per
 * shard from the progress between two refreshes (see shared/shard-rates.ts).
 */
import { type JetStreamManager, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { listShardConsumers, type ShardConsumerInfo } from "../../shared/adapters/nats/shard-consumers.js";
import type { SluiceConfig } from "../../shared/contract/config.js";
import { parseShardKey } from "../../shared/contract/ownership.js";
import type { SinkInspector } from "../../shared/contract/ports.js";
import { epochConsumer } from "../../shared/contract/wire.js";
import { type ProgressSample, type ShardRates, shardRates } from "../../shared/core/shard-rates.js";
import { formatMergeStatus } from "./merge-commands.js";
import { gatherStatus, type StatusReport } from "./status.js";

const ESC = "\x1b[";
const HOME = `${ESC}H`;
const CLEAR_SCREEN = `${ESC}2J`;
const CLEAR_LINE_END = `${ESC}K`;
const CLEAR_BELOW = `${ESC}J`;
const HIDE_CURSOR = `${ESC}?25l`;
const SHOW_CURSOR = `${ESC}?25h`;

export interface WatchFrameMeta {
  at: Date;
  intervalMs: number;
  /** Set when this refresh failed; the last good report is shown under it. */
  error?: string;
}

const fmtRate = (r: number | null | undefined): string => (r == null ? "-" : r.toFixed(r < 10 ? 1 : 0));

/** One frame of the live view: members, leader, and every shard with its records/s. */
export function formatWatchFrame(s: StatusReport, rates: ShardRates | null, meta: WatchFrameMeta): string {
  const lines: string[] = [];
  const lagKnown = s.shards.filter((r) => r.lag !== null);
  const totalLag = lagKnown.reduce((n, r) => n + (r.lag ?? 0), 0);
  lines.push(
    `sluice status  ${meta.at.toISOString().slice(11, 19)}  every ${(meta.intervalMs / 1000).toFixed(1)} s  (Ctrl-C to quit)`,
  );
  if (meta.error) lines.push(`refresh failed: ${meta.error}`);
  lines.push(
    `leader: ${s.leader ? `${s.leader.holder} (term ${s.leader.term})` : "none"}    throughput: ${fmtRate(rates?.total)} records/s    lag: ${lagKnown.length ? totalLag : "?"}`,
  );
  const members = Object.entries(s.view?.members ?? {}).sort(([a], [b]) => a.localeCompare(b));
  lines.push(`members (${members.length}):`);
  for (const [id, m] of members) {
    lines.push(
      `  ${id.padEnd(8)} shards ${String(m.held).padStart(4)}  last heartbeat ${String(m.lastSeenMsAgo).padStart(5)} ms ago${m.leaving ? "  (leaving)" : ""}`,
    );
  }
  for (const m of s.merges) lines.push(formatMergeStatus(m));
  lines.push("shard        owner     epoch  phase      committed      lag   records/s");
  for (const r of s.shards) {
    lines.push(
      `${r.shard.padEnd(12)} ${String(r.owner ?? "-").padEnd(9)} ${String(r.epoch).padStart(5)}  ${r.phase.padEnd(9)} ${String(r.committed).padStart(10)} ${String(r.lag ?? "?").padStart(8)} ${fmtRate(rates?.perShard[r.shard]).padStart(11)}`,
    );
  }
  return lines.join("\n");
}

/**
 * The frame as written to a terminal: cursor home, each line cleared to its end, everything
 * below cleared. Overwriting in place instead of clearing the screen first avoids flicker.
 */
export function redraw(frame: string): string {
  return `${HOME}${frame.split("\n").join(`${CLEAR_LINE_END}\n`)}${CLEAR_LINE_END}\n${CLEAR_BELOW}`;
}

/** The owners' consumers' progress for the shards of `report` (unknown where there is no owner). */
export function progressOf(
  report: StatusReport,
  consumers: Map<string, Map<string, ShardConsumerInfo>>,
  at: number,
): ProgressSample {
  const shards: ProgressSample["shards"] = {};
  for (const r of report.shards) {
    const ref = parseShardKey(r.shard);
    const found =
      ref && r.owner
        ? epochConsumer(consumers.get(ref.pipeline), ref.pipeline, ref.shard, r.epoch)
        : undefined;
    const name = found?.name ?? null;
    const ci = found?.value;
    shards[r.shard] = name && ci ? { counter: name, count: ci.ackFloorConsumerSeq } : null;
  }
  return { at, shards };
}

async function sample(
  nc: NatsConnection,
  jsm: JetStreamManager,
  cfg: SluiceConfig,
  sink: SinkInspector,
): Promise<{ report: StatusReport; progress: ProgressSample }> {
  const report = await gatherStatus(nc, cfg, sink);
  const at = Date.now();
  const consumers = new Map<string, Map<string, ShardConsumerInfo>>();
  for (const p of cfg.pipelines) consumers.set(p.name, await listShardConsumers(nc, jsm, p));
  return { report, progress: progressOf(report, consumers, at) };
}

/** Redraws the status every `intervalMs` until SIGINT/SIGTERM (or `signal`), then restores the cursor. */
export async function watchStatus(
  nc: NatsConnection,
  cfg: SluiceConfig,
  sink: SinkInspector,
  opts: { intervalMs: number; out?: NodeJS.WriteStream; signal?: AbortSignal },
): Promise<void> {
  const out = opts.out ?? process.stdout;
  const tty = out.isTTY === true;
  const jsm = await jetstreamManager(nc, { timeout: 3_000 });
  const done = new AbortController();
  // Ends the wait between refreshes at once when stopped.
  let wake = (): void => {};
  const stop = (): void => {
    done.abort();
    wake();
  };
  opts.signal?.addEventListener("abort", stop, { once: true });
  // The handlers replace the default exit on Ctrl-C, so the cursor is shown again before exiting.
  process.once("SIGINT", stop);
  process.once("SIGTERM", stop);
  const restoreCursor = (): void => {
    if (tty) out.write(SHOW_CURSOR);
  };
  process.once("exit", restoreCursor);
  if (tty) out.write(`${HIDE_CURSOR}${CLEAR_SCREEN}`);
  let prev: ProgressSample | null = null;
  let last: { report: StatusReport; rates: ShardRates | null } | null = null;
  try {
    while (!done.signal.aborted) {
      let error: string | undefined;
      try {
        const { report, progress } = await sample(nc, jsm, cfg, sink);
        last = { report, rates: prev ? shardRates(prev, progress) : null };
        prev = progress;
      } catch (err) {
        // Keep the previous sample: rates resume from it once a refresh succeeds again.
        error = (err as Error).message;
      }
      if (done.signal.aborted) break;
      const frame = last
        ? formatWatchFrame(last.report, last.rates, {
            at: new Date(),
            intervalMs: opts.intervalMs,
            ...(error ? { error } : {}),
          })
        : `sluice status: waiting for the cluster${error ? ` (${error})` : ""}`;
      out.write(tty ? redraw(frame) : `${frame}\n\n`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, opts.intervalMs);
        wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
  } finally {
    process.off("SIGINT", stop);
    process.off("SIGTERM", stop);
    process.off("exit", restoreCursor);
    opts.signal?.removeEventListener("abort", stop);
    restoreCursor();
  }
}
