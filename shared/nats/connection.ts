import { connect, type NatsConnection } from "@nats-io/transport-node";

export interface ConnectOptions {
  servers: string[];
  name: string;
}

/**
 * Connects with reconnects forever: a node outlives NATS node restarts and leader changes;
 * the protocol's timeouts, not the client, decide when something is lost.
 */
export async function connectNats(opts: ConnectOptions): Promise<NatsConnection> {
  return connect({
    servers: opts.servers,
    name: opts.name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    pingInterval: 5_000,
    timeout: 5_000,
  });
}
