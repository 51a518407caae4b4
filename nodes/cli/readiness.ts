import type { NatsConnection } from "@nats-io/transport-node";
import type { SluiceConfig } from "../../shared/contract/config.js";
import type { SinkInspector } from "../../shared/contract/ports.js";
import { gatherStatus, type StatusReport } from "./status.js";
import { waitUntil } from "./wait.js";

/** Every shard owned, active with no move announced, and fenced in the sink at its current epoch; a leader elected. */
export function isSettled(s: StatusReport, workers?: readonly string[]): boolean {
  return (
    s.leader !== null &&
    s.shards.every(
      (r) =>
        r.owner !== null &&
        r.phase === "active" &&
        // An announced move (its target preparing) is a hand-off under way.
        !r.next &&
        r.fencedEpoch === r.epoch &&
        (!workers || workers.includes(r.owner)),
    )
  );
}

export async function waitSettled(
  nc: NatsConnection,
  cfg: SluiceConfig,
  sink: SinkInspector,
  timeoutMs: number,
  workers?: readonly string[],
): Promise<StatusReport> {
  return waitUntil(
    "every shard to be owned and active",
    timeoutMs,
    async () => {
      const s = await gatherStatus(nc, cfg, sink);
      return isSettled(s, workers) ? s : undefined;
    },
    200,
  );
}
