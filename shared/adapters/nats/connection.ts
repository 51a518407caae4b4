import { jetstreamManager } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import { atLeastVersion, NATS_SERVER_FLOOR, NATS_SERVER_INSTALL_HINT } from "../../contract/nats-server.js";
import type { RoleCredentials } from "../../contract/permissions.js";
import { inputStream, type PipelineStreams } from "../../contract/wire.js";

export interface ConnectOptions {
  servers: string[];
  name: string;
  /** A role's user, password and inbox prefix (README "Security"); none on an open cluster. */
  auth?: RoleCredentials | undefined;
  /** TLS: the CA that signed the servers' certificates, and a client certificate if they ask. */
  tls?: TlsFiles | undefined;
}

/** Files (PEM) of a TLS connection to NATS. */
export interface TlsFiles {
  caFile: string;
  certFile?: string | undefined;
  keyFile?: string | undefined;
}

async function connectWith(
  servers: string[],
  name: string,
  noRandomize: boolean,
  { auth, tls }: Pick<ConnectOptions, "auth" | "tls">,
): Promise<NatsConnection> {
  // The first connection has no reconnects: a cluster that is down, a wrong port or refused
  // credentials fail here, and the caller (often a person at a CLI) gets where and why.
  const nc = await connect({
    servers,
    name,
    noRandomize,
    ...(auth ? { user: auth.user, pass: auth.password, inboxPrefix: auth.inboxPrefix } : {}),
    ...(tls
      ? {
          tls: {
            caFile: tls.caFile,
            ...(tls.certFile ? { certFile: tls.certFile } : {}),
            ...(tls.keyFile ? { keyFile: tls.keyFile } : {}),
          },
        }
      : {}),
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    // A server that stops answering (paused, cut off) is left after two unanswered pings,
    // about 2-3 s: until then every request through it waits, a sink's commits included.
    pingInterval: 1_000,
    maxPingOut: 2,
    timeout: 5_000,
  }).catch((err: unknown) => {
    throw new SluiceError(
      ErrorCode.Unavailable,
      `cannot connect to NATS at ${servers.join(", ")}: ${err instanceof Error ? err.message : String(err)}`,
      { retryable: true, cause: err },
    );
  });
  checkServerVersion(nc);
  return nc;
}

/**
 * Refuses a server below `NATS_SERVER_FLOOR`: sluice's streams use features it lacks, and
 * failing at connect with the reason beats failing later at the first stream or consumer.
 */
function checkServerVersion(nc: NatsConnection): void {
  const version = nc.info?.version ?? "unknown";
  if (atLeastVersion(version)) return;
  void nc.close();
  throw new SluiceError(
    ErrorCode.UnsupportedServer,
    `nats-server ${version} (${nc.info?.server_name ?? "?"}) is older than v${NATS_SERVER_FLOOR}, the oldest sluice runs on: ${NATS_SERVER_INSTALL_HINT}`,
  );
}

/**
 * Connects with reconnects forever: a node outlives NATS node restarts and leader changes;
 * the protocol's timeouts, not the client, decide when something is lost.
 */
export async function connectNats(opts: ConnectOptions): Promise<NatsConnection> {
  return connectWith(opts.servers, opts.name, false, opts);
}

/**
 * Connects, like `connectNats`, to the server that leads `stream` if one of `servers` does:
 * a publish sent there is stored without a route hop to the leader and back, which on the
 * 3-node cluster of the benchmark is a fifth of the producer's throughput (Kafka's producers
 * write to the partition leader for the same reason). The leader is read once: when it moves
 * later the connection stays, costing that hop, never correctness. Any server is kept when
 * the stream has no leader, is unknown, or no listed server leads it.
 */
export async function connectNearStream(opts: ConnectOptions & { stream: string }): Promise<NatsConnection> {
  const nc = await connectNats(opts);
  let leader: string | undefined;
  try {
    leader = (await (await jetstreamManager(nc)).streams.info(opts.stream)).cluster?.leader;
  } catch {
    return nc;
  }
  if (leader === undefined || nc.info?.server_name === leader) return nc;
  for (const url of opts.servers) {
    // The other servers stay in the list for reconnects, after this one.
    const servers = [url, ...opts.servers.filter((s) => s !== url)];
    const candidate = await connectWith(servers, opts.name, true, opts).catch(() => null);
    if (candidate === null) continue;
    if (candidate.info?.server_name === leader) {
      await nc.close();
      return candidate;
    }
    await candidate.close();
  }
  return nc;
}

/**
 * A connection near the leader of the first of `pipelines` kept in one stream, or anywhere
 * when each of their shards has its own stream (their leaders are spread over the servers).
 * Publishing there stores a record without a route hop to the leader and back; reading there
 * takes each record straight from the shard consumers, which sit on the stream leader
 * (`JetStreamShardSource`), instead of through another server, which on the benchmark's
 * 3-node cluster spent about 5 µs of CPU per record forwarding it.
 */
export function connectNearPipelines(
  opts: ConnectOptions & { pipelines: readonly PipelineStreams[] },
): Promise<NatsConnection> {
  const shared = opts.pipelines.find((p) => p.streams !== "per-shard");
  return shared
    ? connectNearStream({
        servers: opts.servers,
        name: opts.name,
        auth: opts.auth,
        tls: opts.tls,
        stream: inputStream(shared, 0),
      })
    : connectNats(opts);
}

/** A connection for publishing into a pipeline (`connectNearPipelines`). */
export function connectForPublishing(
  opts: ConnectOptions & { pipeline: PipelineStreams },
): Promise<NatsConnection> {
  return connectNearPipelines({
    servers: opts.servers,
    name: opts.name,
    auth: opts.auth,
    tls: opts.tls,
    pipelines: [opts.pipeline],
  });
}

/**
 * Drains `nc` (its subscriptions' pending messages handled, its publishes flushed), closing it
 * instead once `withinMs` has passed: with every server gone a drain never finishes, and a node
 * told to stop must exit all the same.
 */
export async function drainWithin(nc: NatsConnection, withinMs = 5_000): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<"late">((resolve) => {
    timer = setTimeout(() => resolve("late"), withinMs);
  });
  const done = await Promise.race([
    nc.drain().then(
      () => "drained" as const,
      () => "failed" as const,
    ),
    late,
  ]);
  clearTimeout(timer);
  if (done !== "drained") await nc.close().catch(() => undefined);
}
