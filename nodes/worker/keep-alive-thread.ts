/**
 * The keep-alive thread of a worker (`HeartbeatKeepAlive`): its own event loop and its own
 * NATS connection, so that it can heartbeat while the worker's loop is busy.
 */
import { parentPort, workerData } from "node:worker_threads";
import { connectNats } from "../../shared/adapters/nats/connection.js";
import { NatsWorkerControlBus } from "../../shared/adapters/nats/nats-control-bus.js";
import type { Heartbeat } from "../../shared/contract/ownership.js";
import { keepAliveAction } from "../../shared/core/keep-alive.js";
import type { FromKeepAlive, KeepAliveThreadData, ToKeepAlive } from "./heartbeat-keep-alive.js";

const port = parentPort!;
const o = workerData as KeepAliveThreadData;
const post = (m: FromKeepAlive): void => port.postMessage(m);

try {
  const nc = await connectNats({ servers: o.servers, name: o.name, auth: o.auth, tls: o.tls });
  const bus = new NatsWorkerControlBus(nc);
  let last: Heartbeat | null = null;
  const clock = { lastBeatAt: Date.now(), lastKeepAliveAt: 0 };
  /** Keep-alives sent since the loop's last heartbeat, and whether they ran out. */
  let sent = 0;
  let expired = false;
  const timer = setInterval(
    () => {
      if (!last) return;
      const now = Date.now();
      const a = keepAliveAction(clock, now, o);
      if (a.type === "expired") expired = true;
      if (a.type !== "send") return;
      bus.announce({ ...last, sentAt: now });
      clock.lastKeepAliveAt = now;
      sent++;
    },
    // Often enough that a keep-alive goes out within a tenth of an interval of being due.
    Math.max(5, Math.round(o.heartbeatMs / 10)),
  );
  port.on("message", (m: ToKeepAlive) => {
    if (m.type === "beat") {
      const now = Date.now();
      if (sent > 0 || expired)
        post({ type: "stall", stalledMs: now - clock.lastBeatAt, keepAlives: sent, expired });
      sent = 0;
      expired = false;
      last = m.hb;
      clock.lastBeatAt = now;
    } else {
      clearInterval(timer);
      void nc
        .drain()
        .catch(() => undefined)
        .finally(() => port.close());
    }
  });
  post({ type: "ready" });
} catch (err) {
  post({ type: "failed", message: (err as Error).message });
  port.close();
}
