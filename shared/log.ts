/**
 * pino for the node processes: JSON lines (node id in every line), pretty when stdout is a
 * terminal.
 */
import { pino } from "pino";
import type { Logger } from "./logger.js";

export function createLogger(node: string, role: string): Logger {
  const pretty = process.stdout.isTTY && process.env.SLUICE_LOG_JSON !== "1";
  return pino({
    level: process.env.SLUICE_LOG_LEVEL ?? "info",
    base: { node, role, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    ...(pretty ? { transport: { target: "pino-pretty", options: { colorize: true } } } : {}),
  }) as unknown as Logger;
}
