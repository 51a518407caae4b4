/**
 * Reading throughput over one pre-filled stream, in the same run: a raw ordered consumer (no
 * acks, no work: the ceiling) against the sluice worker path (per-epoch pull consumers, decode,
 * one fenced commit and one ack per batch) into a sink that discards the rows.
 */
import { DeliverPolicy, jetstream } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { feedBufferMessages, type WorkerConfig } from "../../shared/config.js";
import { JetStreamShardSource } from "../../shared/nats/jetstream-shard-source.js";
import type { DeadLetterQueue } from "../../shared/ports.js";
import { DiscardSink } from "../../shared/sink/discard-sink.js";
import { inputStream } from "../../shared/wire.js";
import { ShardPipeline } from "../../shared/worker/shard-pipeline.js";
import { waitUntil } from "../cli/wait.js";
import type { Rate } from "./publish-rates.js";

const rate = (records: number, ms: number): Rate => ({
  records,
  seconds: ms / 1000,
  perSecond: records / (ms / 1000),
});

/** Reads `expected` messages of the pipeline's stream with an ordered consumer. */
export async function orderedReadRate(nc: NatsConnection, pipeline: string, expected: number): Promise<Rate> {
  const js = jetstream(nc, { timeout: 10_000 });
  // The stream holds only this pipeline's input, so no filter (2.9 servers take one at most).
  const consumer = await js.consumers.get(inputStream(pipeline), { deliver_policy: DeliverPolicy.All });
  let seen = 0;
  const t0 = performance.now();
  const messages = await consumer.consume({ max_messages: 4_096 });
  for await (const m of messages) {
    void m;
    if (++seen >= expected) break;
  }
  const ms = performance.now() - t0;
  await messages.close().catch(() => undefined);
  return rate(seen, ms);
}

const noDeadLetters: DeadLetterQueue = {
  async publish(entries) {
    if (entries.length > 0) throw new Error(`benchmark records failed to decode: ${entries[0]!.message}`);
  },
};

/**
 * Runs one `ShardPipeline` per shard (the worker's data path, lease checks included) until
 * `expected` records are committed to a `DiscardSink`.
 */
export async function pipelineReadRate(
  nc: NatsConnection,
  pipeline: string,
  shards: number,
  expected: number,
  settings: WorkerConfig,
  deadlineMs = 120_000,
): Promise<Rate> {
  const sink = new DiscardSink();
  const source = new JetStreamShardSource(nc, {
    maxAckPending: settings.maxAckPending,
    ackWaitMs: settings.ackWaitMs,
    bufferMessages: feedBufferMessages(settings),
  });
  const firstEpoch = Math.floor(Date.now() / 1000);
  let batches = 0;
  let restarts = 0;
  let finished = false;
  const current = new Map<number, ShardPipeline>();
  const t0 = performance.now();
  // Like the lease machine: a run that fails (a consumer reporting missed heartbeats while the
  // server is saturated) starts over from the sink's checkpoint, here at the next epoch.
  const runShard = async (shard: number): Promise<void> => {
    for (let epoch = firstEpoch; !finished; epoch++) {
      const p = new ShardPipeline(
        { pipeline, shard },
        epoch,
        "bench",
        { sink, source, deadLetters: noDeadLetters },
        settings,
        {
          leaseFresh: () => true,
          now: () => performance.now(),
          onBatch: () => {
            batches++;
            if (sink.discarded >= expected) finished = true;
          },
        },
      );
      current.set(shard, p);
      await p.acquire();
      await p.run();
      if (!finished) restarts++;
    }
  };
  const runs = Array.from({ length: shards }, (_, shard) => runShard(shard));
  let ms = 0;
  try {
    await waitUntil(
      "the worker path to read every record",
      deadlineMs,
      () => (finished ? true : undefined),
      5,
    );
    ms = performance.now() - t0;
  } finally {
    finished = true;
    await Promise.all([...current.values()].map((p) => p.drain().catch(() => undefined)));
    await Promise.all(runs.map((r) => r.catch(() => undefined)));
  }
  return { ...rate(sink.discarded, ms), batches, restarts };
}
