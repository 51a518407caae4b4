/**
 * pino for the node processes: JSON lines (node id in every line; shard and epoch on the lines
 * the runtimes write about a shard, through child loggers), pretty when stdout is a terminal.
 *
 * A line written while a span is active (inside a batch commit, a lease acquisition or
 * hand-off, an assignment write) carries that span's `trace_id` and `span_id`, so logs and
 * traces join on them. With tracing off there is never an active span and the mixin adds
 * nothing.
 */
import { isSpanContextValid, trace } from "@opentelemetry/api";
import { pino } from "pino";
import type { Logger } from "../contract/logger.js";

/** `trace_id` / `span_id` of the active span, when there is a valid one. */
export function traceFields(): { trace_id?: string; span_id?: string; trace_flags?: string } {
  const sc = trace.getActiveSpan()?.spanContext();
  // A fresh object every time: pino merges the line's fields into what the mixin returns.
  if (!sc || !isSpanContextValid(sc)) return {};
  return { trace_id: sc.traceId, span_id: sc.spanId, trace_flags: `0${sc.traceFlags.toString(16)}` };
}

export function createLogger(node: string, role: string): Logger {
  const pretty = process.stdout.isTTY && process.env.SLUICE_LOG_JSON !== "1";
  return pino({
    level: process.env.SLUICE_LOG_LEVEL ?? "info",
    base: { node, role, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    mixin: traceFields,
    ...(pretty ? { transport: { target: "pino-pretty", options: { colorize: true } } } : {}),
  }) as unknown as Logger;
}
