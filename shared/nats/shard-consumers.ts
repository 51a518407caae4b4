/**
 * What JetStream knows about the shards' consumers, for status views: one paged list request per
 * pipeline instead of one info request per shard, so a view polling every second costs the
 * JetStream API one request per pipeline.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import { inputStream } from "../wire.js";

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

/** Every consumer of the pipeline's input stream, by name (`P-sN-eE`). */
export async function listShardConsumers(
  jsm: JetStreamManager,
  pipeline: string,
): Promise<Map<string, ShardConsumerInfo>> {
  const out = new Map<string, ShardConsumerInfo>();
  for await (const ci of jsm.consumers.list(inputStream(pipeline))) {
    out.set(ci.name, {
      name: ci.name,
      pending: ci.num_pending,
      ackPending: ci.num_ack_pending,
      ackFloorStreamSeq: ci.ack_floor.stream_seq,
      ackFloorConsumerSeq: ci.ack_floor.consumer_seq,
    });
  }
  return out;
}

/** The lag of a shard as `sluice status` counts it: not yet delivered plus not yet acked. */
export const consumerLag = (c: ShardConsumerInfo): number => c.pending + c.ackPending;
