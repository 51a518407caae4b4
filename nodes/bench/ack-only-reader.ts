/**
 * A reader process of the benchmark's ack-only ceiling (`publishThenAckOnly`): it receives its
 * share of a pipeline's shards exactly as a worker does (`JetStreamShardSource`: an R1 consumer
 * per shard on the stream leader, a standing pull, the worker's in-flight bounds for the shards
 * it holds) and acks every batch it reads, and does nothing else: no decode, stages or sink.
 *
 * Its one argument is a JSON `AckOnlyReaderArgs`. It prints `ready` once every consumer is open,
 * then `read N` (records read so far) at most every 10 ms while the count moves, and exits when
 * its stdin closes, deleting its consumers.
 */
import { connectNats } from "../../shared/adapters/nats/connection.js";
import { JetStreamShardSource } from "../../shared/adapters/nats/jetstream-shard-source.js";
import { parseConfig } from "../../shared/contract/config.js";
import type { ShardFeed } from "../../shared/contract/ports.js";
import { shardFlow } from "../../shared/core/batch-size.js";

export interface AckOnlyReaderArgs {
  servers: string[];
  pipeline: string;
  /** The pipeline's shard count. */
  shards: number;
  /** The shards this reader holds. */
  mine: number[];
  /** The consumers' epoch (their names carry it). */
  epoch: number;
}

const args = JSON.parse(process.argv[2] ?? "") as AckOnlyReaderArgs;
const config = parseConfig({ pipelines: [{ name: args.pipeline, shards: args.shards }] });
const p = config.pipelines[0]!;
const w = config.worker;
const flow = shardFlow(w, args.mine.length);
const nc = await connectNats({ servers: args.servers, name: `sluice-bench-ack-only-${args.mine[0]}` });
const source = new JetStreamShardSource(nc, {
  pipelines: [p],
  maxAckPending: w.maxAckPending,
  ackWaitMs: w.ackWaitMs,
  bufferMessages: flow.bufferMessages,
});

let read = 0;
let stopping = false;
const feeds = await Promise.all(
  args.mine.map((shard) => source.open({ pipeline: p.name, shard }, args.epoch, { seq: 1 }, flow)),
);
// Each batch acked as a worker acks a committed one: the last record of what `next` gave.
const loops = feeds.map(async (feed: ShardFeed) => {
  while (!stopping) {
    const got = await feed.next(flow.batchMax, w.pullWaitMs);
    if (got.length === 0) continue;
    read += got.length;
    feed.ack(got[got.length - 1]!);
  }
});
process.stdout.write("ready\n");
let told = 0;
const progress = setInterval(() => {
  if (read === told) return;
  told = read;
  process.stdout.write(`read ${read}\n`);
}, 10);

process.stdin.resume();
process.stdin.on("end", async () => {
  stopping = true;
  clearInterval(progress);
  for (const f of feeds) f.wake?.();
  await Promise.all(loops.map((l) => l.catch(() => undefined)));
  await Promise.all(feeds.map((f) => f.close()));
  await Promise.all(
    args.mine.map((shard) => source.remove({ pipeline: p.name, shard }, args.epoch).catch(() => undefined)),
  );
  await nc.close();
  process.exit(0);
});
