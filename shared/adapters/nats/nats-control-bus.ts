/**
 * The control plane over core NATS: heartbeats are requests the leader answers with the
 * worker's grants (standbys listen without answering); releases are plain publishes.
 * Both are lossy by design: the protocol's timeouts cover a lost message.
 */
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Heartbeat } from "../../contract/ownership.js";
import type {
  AssignedNotice,
  CoordinatorControlBus,
  Grants,
  ReleasedNotice,
  WorkerControlBus,
} from "../../contract/ports.js";
import { ControlSubjects } from "../../contract/wire.js";

const enc = new TextEncoder();
const dec = new TextDecoder();
const toBytes = (v: unknown): Uint8Array => enc.encode(JSON.stringify(v));
const fromBytes = <T>(b: Uint8Array): T => JSON.parse(dec.decode(b)) as T;

export class NatsWorkerControlBus implements WorkerControlBus {
  constructor(
    private readonly nc: NatsConnection,
    /** Sees every heartbeat as it is sent (the worker hands them to its `HeartbeatKeepAlive`). */
    private readonly onHeartbeat?: (hb: Heartbeat) => void,
  ) {}

  async heartbeat(hb: Heartbeat, timeoutMs: number): Promise<Grants | null> {
    this.onHeartbeat?.(hb);
    try {
      const m = await this.nc.request(ControlSubjects.heartbeat, toBytes(hb), { timeout: timeoutMs });
      return fromBytes<Grants>(m.data);
    } catch {
      return null;
    }
  }

  /**
   * A heartbeat with no reply subject: it keeps the worker a member, and the leader, having
   * nowhere to answer, confirms no lease with it (`HeartbeatKeepAlive`).
   */
  announce(hb: Heartbeat): void {
    try {
      this.nc.publish(ControlSubjects.heartbeat, toBytes(hb));
    } catch {
      // Connection closing: the next one carries it.
    }
  }

  released(notice: ReleasedNotice): void {
    try {
      this.nc.publish(ControlSubjects.released, toBytes(notice));
    } catch {
      // Connection closing: the hand-off timeout covers it.
    }
  }

  onReleased(handler: (n: ReleasedNotice) => void): () => void {
    const sub = this.nc.subscribe(ControlSubjects.released, { callback: decoding(handler) });
    return () => sub.unsubscribe();
  }

  onAssigned(handler: (n: AssignedNotice) => void): () => void {
    const sub = this.nc.subscribe(ControlSubjects.assigned, { callback: decoding(handler) });
    return () => sub.unsubscribe();
  }
}

/** Decodes notices for `handler`; a malformed one is ignored (timeouts and the watch cover it). */
function decoding<T>(handler: (n: T) => void) {
  return (err: Error | null, m: { data: Uint8Array }): void => {
    if (err) return;
    let n: T;
    try {
      n = fromBytes<T>(m.data);
    } catch {
      return;
    }
    handler(n);
  };
}

export class NatsCoordinatorControlBus implements CoordinatorControlBus {
  private readonly subs: Subscription[] = [];

  constructor(private readonly nc: NatsConnection) {}

  onHeartbeat(handler: (hb: Heartbeat, reply: (g: Grants) => void) => void): void {
    this.subs.push(
      this.nc.subscribe(ControlSubjects.heartbeat, {
        callback: (err, m) => {
          if (err) return;
          let hb: Heartbeat;
          try {
            hb = fromBytes<Heartbeat>(m.data);
          } catch {
            return;
          }
          handler(hb, (g) => m.respond(toBytes(g)));
        },
      }),
    );
  }

  onReleased(handler: (n: ReleasedNotice) => void): void {
    this.subs.push(
      this.nc.subscribe(ControlSubjects.released, { callback: decoding<ReleasedNotice>(handler) }),
    );
  }

  assigned(n: AssignedNotice): void {
    try {
      this.nc.publish(ControlSubjects.assigned, toBytes(n));
    } catch {
      // Connection closing: the store's watch delivers the entry anyway.
    }
  }

  async close(): Promise<void> {
    for (const s of this.subs) s.unsubscribe();
    this.subs.length = 0;
  }
}
