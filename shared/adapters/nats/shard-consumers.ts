/**
 * What JetStream knows about the shards' consumers, for status views. The clustered LIST
 * request is avoided on purpose: the stream leader gathers every consumer's info from its
 * server and, when one is being created or deleted (as during any rebalance), waits about 4 s
 * for it ("Did not receive all consumer info results"), which stalls the stream's other work.
 * NAMES is answered from the cluster's assignments; INFO goes to one consumer's leader.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import { consumerEpoch, inputStreams, type PipelineStreams } from "../../contract/wire.js";

const dec = new TextDecoder();

/** The names of a stream's consumers (`$JS.API.CONSUMER.NAMES`, paged). */
export async function consumerNames(
  nc: NatsConnection,
  stream: string,
  timeoutMs = 5_000,
): Promise<string[]> {
  const names: string[] = [];
  for (let offset = 0; ; ) {
    const msg = await nc.request(`$JS.API.CONSUMER.NAMES.${stream}`, JSON.stringify({ offset }), {
      timeout: timeoutMs,
    });
    const page = JSON.parse(dec.decode(msg.data)) as {
      consumers?: string[] | null;
      total?: number;
      error?: { code: number; description: string };
    };
    if (page.error) {
      throw new SluiceError(ErrorCode.Unavailable, `consumer names of ${stream}: ${page.error.description}`, {
        retryable: true,
      });
    }
    const got = page.consumers ?? [];
    names.push(...got);
    offset += got.length;
    if (got.length === 0 || offset >= (page.total ?? 0)) return names;
  }
}

export interface ShardConsumerInfo {
  name: string;
  /** Messages of the shard not yet delivered. */
  pending: number;
  /** Delivered, not yet acked (acks follow sink commits). */
  ackPending: number;
  /** Stream sequence of the ack floor: every record of the shard up to it is committed. */
  ackFloorStreamSeq: number;
  /** Deliveries acked so far by this consumer: the shard's records since the consumer began. */
  ackFloorConsumerSeq: number;
}

/**
 * The consumer of every epoch of every shard that has one, by name (pick a lease's own with
 * `epochConsumer`); a shard whose stream or consumer does not answer in time is left out. Not
 * only the newest epoch's: a consumer of a later epoch than the shard's lease can outlive a
 * hand-off that was called off (its worker crashed while preparing it), and reading only that
 * one would leave the lease's lag unknown until the server removes it, an hour later. An
 * epoch's open creates candidates at once and deletes all but one (`JetStreamShardSource`), so
 * while that clean-up runs the names list several: each is asked for, and the one that has
 * delivered most is taken.
 */
export async function listShardConsumers(
  nc: NatsConnection,
  jsm: JetStreamManager,
  pipeline: PipelineStreams & { shards: number },
): Promise<Map<string, ShardConsumerInfo>> {
  // Candidates by shard and epoch.
  const groups = new Map<string, { stream: string; names: string[] }>();
  await Promise.all(
    [...inputStreams(pipeline)].map(async ([stream, shards]) => {
      const names = await consumerNames(nc, stream).catch(() => []);
      for (const shard of shards) {
        for (const name of names) {
          const epoch = consumerEpoch(pipeline.name, shard, name);
          if (epoch === null) continue;
          const key = `${shard}/${epoch}`;
          const g = groups.get(key);
          if (g) g.names.push(name);
          else groups.set(key, { stream, names: [name] });
        }
      }
    }),
  );
  const out = new Map<string, ShardConsumerInfo>();
  await Promise.all(
    [...groups.values()].map(async ({ stream, names }) => {
      const infos = await Promise.all(names.map((n) => jsm.consumers.info(stream, n).catch(() => null)));
      const ci = infos
        .filter((x) => x !== null)
        .sort((a, b) => b.delivered.consumer_seq - a.delivered.consumer_seq)[0];
      if (!ci) return;
      out.set(ci.name, {
        name: ci.name,
        pending: ci.num_pending,
        ackPending: ci.num_ack_pending,
        ackFloorStreamSeq: ci.ack_floor.stream_seq,
        ackFloorConsumerSeq: ci.ack_floor.consumer_seq,
      });
    }),
  );
  return out;
}

/** The lag of a shard as `sluice status` counts it: not yet delivered plus not yet acked. */
export const consumerLag = (c: ShardConsumerInfo): number => c.pending + c.ackPending;
