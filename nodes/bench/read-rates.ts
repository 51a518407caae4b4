/**
 * Reading throughput over one pre-filled pipeline, in the same run: raw ordered consumers, one
 * per input stream, all at once (no acks, no work: the ceiling) against
 * the sluice worker path (per-epoch pull consumers, decode, one fenced commit and one ack per
 * batch) into a sink that discards the rows. Both are timed from the first delivery to the
 * last record: creating sixteen consumers goes through the cluster's meta leader and takes
 * longer than a short read itself, so counting it would measure consumer creation.
 */
import { DeliverPolicy, type JetStreamClient, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { JetStreamShardSource } from "../../shared/adapters/nats/jetstream-shard-source.js";
import { DiscardSink } from "../../shared/adapters/sink/discard-sink.js";
import type { PipelineConfig, WorkerConfig } from "../../shared/contract/config.js";
import type { DeadLetterQueue, ShardFeed, ShardSource } from "../../shared/contract/ports.js";
import { inputStreams } from "../../shared/contract/wire.js";
import { feedBufferMessages, shardFlow } from "../../shared/core/batch-size.js";
import { ShardPipeline } from "../../shared/pipeline/shard-pipeline.js";
import type { Stage } from "../../shared/pipeline/stage.js";
import { waitUntil } from "../cli/wait.js";
import { type Rate, rate } from "./publish-rates.js";

/** Records held by the pipeline's input streams, in total. */
export async function pipelineRecords(nc: NatsConnection, p: PipelineConfig): Promise<number> {
  const jsm = await jetstreamManager(nc, { timeout: 10_000 });
  const counts = await Promise.all(
    [...inputStreams(p).keys()].map(async (s) => (await jsm.streams.info(s)).state.messages),
  );
  return counts.reduce((a, b) => a + b, 0);
}

/**
 * When the first message of a measurement arrived (performance.now(), ms), and when the last of
 * its consumers got its first: with sixteen consumers created at once, the last one starts
 * reading 0.1-2 s after the first (each placement goes through the meta leader, see
 * `JetStreamShardSource.open`), which on a short read is much of the time measured.
 */
class FirstDelivery {
  at: number | undefined;
  private readonly started = new Set<number>();
  private lastStartAt: number | undefined;
  mark(consumer = 0): void {
    const now = performance.now();
    this.at ??= now;
    if (!this.started.has(consumer)) {
      this.started.add(consumer);
      this.lastStartAt = now;
    }
  }
  /** Seconds from the first consumer's first delivery to the last one's. */
  get spreadS(): number {
    return ((this.lastStartAt ?? 0) - (this.at ?? 0)) / 1000;
  }
}

/** Reads one stream to its end with an ordered consumer; returns the messages read. */
async function readStream(
  js: JetStreamClient,
  stream: string,
  expected: number,
  first: FirstDelivery,
): Promise<number> {
  if (expected === 0) return 0;
  const consumer = await js.consumers.get(stream, { deliver_policy: DeliverPolicy.All });
  const messages = await consumer.consume({ max_messages: 4_096 });
  let seen = 0;
  for await (const m of messages) {
    void m;
    if (seen === 0) first.mark();
    if (++seen >= expected) break;
  }
  await messages.close().catch(() => undefined);
  return seen;
}

/** Reads every record of the pipeline with one ordered consumer per input stream, all at once. */
export async function orderedReadRate(nc: NatsConnection, p: PipelineConfig): Promise<Rate> {
  const js = jetstream(nc, { timeout: 10_000 });
  const jsm = await jetstreamManager(nc, { timeout: 10_000 });
  const streams = await Promise.all(
    [...inputStreams(p).keys()].map(async (s) => ({ s, n: (await jsm.streams.info(s)).state.messages })),
  );
  const first = new FirstDelivery();
  const seen = await Promise.all(streams.map(({ s, n }) => readStream(js, s, n, first)));
  return rate(
    seen.reduce((a, b) => a + b, 0),
    performance.now() - (first.at ?? performance.now()),
  );
}

/** `source` with its feeds' first delivery marked in `first`. */
function firstDeliveryOf(source: ShardSource, first: FirstDelivery): ShardSource {
  return {
    async open(ref, epoch, start) {
      const feed = await source.open(ref, epoch, start);
      return {
        get failure() {
          return feed.failure;
        },
        async next(max, waitMs) {
          const got = await feed.next(max, waitMs);
          if (got.length > 0) first.mark(ref.shard);
          return got;
        },
        ack: (last) => feed.ack(last),
        wake: () => feed.wake?.(),
        close: () => feed.close(),
      };
    },
    removeOlderEpochs: (ref, epoch) => source.removeOlderEpochs(ref, epoch),
    remove: (ref, epoch) => source.remove(ref, epoch),
  };
}

/** The shard source a worker with `settings` reads `p` through. */
function workerSource(nc: NatsConnection, p: PipelineConfig, settings: WorkerConfig): JetStreamShardSource {
  return new JetStreamShardSource(nc, {
    pipelines: [p],
    maxAckPending: settings.maxAckPending,
    ackWaitMs: settings.ackWaitMs,
    bufferMessages: feedBufferMessages(settings),
  });
}

const noDeadLetters: DeadLetterQueue = {
  async publish(entries) {
    if (entries.length > 0) throw new Error(`benchmark records failed to decode: ${entries[0]!.message}`);
  },
};

/**
 * Runs one `ShardPipeline` per shard (the worker's data path, lease checks included) until
 * `expected` records are committed to a `DiscardSink`; with `stages`, through those stages after
 * decode (every record must pass them).
 */
export async function pipelineReadRate(
  nc: NatsConnection,
  p: PipelineConfig,
  expected: number,
  settings: WorkerConfig,
  stages: readonly Stage[] = [],
  deadlineMs = 120_000,
): Promise<Rate> {
  const sink = new DiscardSink();
  const first = new FirstDelivery();
  const source = firstDeliveryOf(workerSource(nc, p, settings), first);
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
      const sp = new ShardPipeline(
        { pipeline: p.name, shard },
        epoch,
        "bench",
        { sink, source, deadLetters: noDeadLetters },
        settings,
        {
          leaseFresh: () => true,
          now: () => performance.now(),
          // One process owns every shard, as one worker would: each takes its share of the budget.
          shardsOwned: () => p.shards,
          stages,
          onBatch: () => {
            batches++;
            if (sink.discarded >= expected) finished = true;
          },
        },
      );
      current.set(shard, sp);
      await sp.acquire();
      await sp.run();
      if (!finished) restarts++;
    }
  };
  const runs = Array.from({ length: p.shards }, (_, shard) => runShard(shard));
  let ms = 0;
  try {
    await waitUntil(
      "the worker path to read every record",
      deadlineMs,
      () => (finished ? true : undefined),
      5,
    );
    ms = performance.now() - (first.at ?? t0);
  } finally {
    finished = true;
    await Promise.all([...current.values()].map((p) => p.drain().catch(() => undefined)));
    await Promise.all(runs.map((r) => r.catch(() => undefined)));
  }
  return { ...rate(sink.discarded, ms), batches, restarts, startSpreadS: first.spreadS };
}

/**
 * The worker path's consumers alone: the same per-shard consumers (`JetStreamShardSource`: R1
 * on the stream leader, filtered per shard, AckPolicy all, the same in-flight bounds), each
 * acked once per batch of up to `batchMax`, with no decoding and no sink. What JetStream
 * itself allows this consumer layout against the ordered read, so the worker path's own cost
 * is the difference between this and `pipelineReadRate`.
 */
export async function consumersReadRate(
  nc: NatsConnection,
  p: PipelineConfig,
  expected: number,
  settings: WorkerConfig,
  deadlineMs = 120_000,
): Promise<Rate> {
  const first = new FirstDelivery();
  const flow = shardFlow(settings, p.shards);
  const source = workerSource(nc, p, settings);
  const epoch = Math.floor(Date.now() / 1000);
  const feeds: ShardFeed[] = [];
  let read = 0;
  const deadline = performance.now() + deadlineMs;
  try {
    // Each shard reads as soon as its consumer is open, as a pipeline does after its acquire.
    await Promise.all(
      Array.from({ length: p.shards }, async (_, shard) => {
        const feed = await source.open({ pipeline: p.name, shard }, epoch, { seq: 1 }, flow);
        feeds.push(feed);
        while (read < expected && performance.now() < deadline) {
          const got = await feed.next(flow.batchMax, settings.pullWaitMs);
          if (got.length === 0) continue;
          first.mark();
          read += got.length;
          feed.ack(got[got.length - 1]!);
        }
      }),
    );
    if (read < expected)
      throw new Error(`the consumers read ${read} of ${expected} records in ${deadlineMs} ms`);
    return rate(read, performance.now() - (first.at ?? performance.now()));
  } finally {
    await Promise.all(feeds.map((f) => f.close()));
    await Promise.all(
      Array.from({ length: p.shards }, (_, shard) =>
        source.remove({ pipeline: p.name, shard }, epoch).catch(() => undefined),
      ),
    );
  }
}
