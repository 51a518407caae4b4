/**
 * Shard feeds on JetStream: one durable pull consumer per (shard, epoch) on the stream that
 * holds the shard (filtered on the shard's subjects in a shared stream), R1, AckPolicy all,
 * starting at the sink's checkpoint + 1. An R1 consumer is created in milliseconds (an R3 one
 * in hundreds), and losing it loses nothing: the sink's checkpoint is the truth of progress.
 * Each consumer lives on the stream leader's server and is replaced when the leader moves
 * (see `JetStreamStreamLeaders` for why).
 */

import {
  AckPolicy,
  type ConsumerConfig,
  type ConsumerInfo,
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
} from "@nats-io/jetstream";
import { type NatsConnection, nanos } from "@nats-io/transport-node";
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import type { ShardRef } from "../../contract/ownership.js";
import type { FeedFlow, FeedStart, ShardFeed, ShardSource, StreamBounds } from "../../contract/ports.js";
import {
  CONSUMER_CANDIDATES,
  consumerEpoch,
  consumerName,
  inputStream,
  type PipelineStreams,
  shardConsumerFilter,
} from "../../contract/wire.js";
import { JetStreamShardFeed } from "./jetstream-shard-feed.js";
import { consumerNames } from "./shard-consumers.js";
import { JetStreamStreamLeaders } from "./stream-leaders.js";

export interface JetStreamShardSourceOptions {
  /** The pipelines read, for the names of their streams. */
  pipelines: readonly PipelineStreams[];
  /** Max unacknowledged messages of a consumer, unless `open` is given a flow. */
  maxAckPending: number;
  /** Redelivery delay of an unacked message, ms. */
  ackWaitMs: number;
  /** Messages the client keeps pulled ahead per shard, unless `open` is given a flow. */
  bufferMessages: number;
  /**
   * Told of each notification of a feed's consumer that is not routine (routine: idle
   * heartbeats, pulls, pulls that expired): missed heartbeats, server statuses
   * such as 409s (after which the client waits for two missed heartbeats before pulling again),
   * a deleted consumer. These explain a shard that paused.
   */
  onStatus?(e: FeedStatusReport): void;
  /**
   * Keep every consumer on the stream leader's server (default true): a consumer the server
   * places on a follower is created again (see `createOnLeader`; after 12 misses a follower's
   * is kept and reported), and a feed whose
   * stream leader moves fails, so its lease re-acquires on the new leader from the checkpoint.
   * False reads whichever replica the server picked (a benchmark's comparison).
   */
  onStreamLeader?: boolean;
}

export interface FeedStatusReport {
  stream: string;
  consumer: string;
  /** The client's notification type (`heartbeats_missed`, `exceeded_limits`, `debug`, ...). */
  type: string;
  /** The server's status code and text, when the notification carries one. */
  code?: number;
  description?: string;
}

/** Notifications of a healthy consumer; everything else is reported (`onStatus`). */
const routineStatus = new Set(["heartbeat", "next", "discard", "reset"]);

/** Consumers created at once per round to land one on the stream leader (`createOnLeader`). */
export const PLACEMENT_CANDIDATES = 3;

/** A consumer that has delivered nothing yet: it starts where its config says. */
const unused = (ci: ConsumerInfo): boolean => ci.delivered.consumer_seq === 0 && ci.num_ack_pending === 0;

export class JetStreamShardSource implements ShardSource {
  private readonly js: JetStreamClient;
  private jsm: JetStreamManager | undefined;
  private readonly leaders: JetStreamStreamLeaders;
  /** Open feeds, so a leader change can fail those left on a follower. */
  private readonly feeds = new Set<JetStreamShardFeed>();
  /** `stream/shard/epoch` -> the consumer its last open kept (see `open`). */
  private readonly kept = new Map<string, string>();

  constructor(
    private readonly nc: NatsConnection,
    private readonly opts: JetStreamShardSourceOptions,
  ) {
    this.js = jetstream(nc, { timeout: 5_000 });
    this.leaders = new JetStreamStreamLeaders(nc, () => this.manager());
    this.leaders.onChange((stream, leader) => {
      for (const f of this.feeds)
        if (f.stream === stream && f.server !== undefined && f.server !== leader)
          f.fail(
            new SluiceError(
              ErrorCode.Unavailable,
              `stream leader moved to ${leader}; the consumer reads ${f.server}'s replica`,
              { retryable: true },
            ),
          );
    });
  }

  private pipelineOf(ref: ShardRef): PipelineStreams {
    const p = this.opts.pipelines.find((x) => x.name === ref.pipeline);
    if (!p) throw new SluiceError(ErrorCode.InvalidConfig, `unknown pipeline '${ref.pipeline}'`);
    return p;
  }

  /** The stream holding the shard. */
  private streamOf(ref: ShardRef): string {
    return inputStream(this.pipelineOf(ref), ref.shard);
  }

  private async manager(): Promise<JetStreamManager> {
    // No account-info probe: the streams are provisioned, and on a worker that just joined the
    // probe would be one more round trip before its first hand-off.
    this.jsm ??= await jetstreamManager(this.nc, { timeout: 5_000, checkAPI: false });
    return this.jsm;
  }

  /** Stream info requests in flight, by stream: the shards of a shared stream opened together share one. */
  private readonly asking = new Map<string, Promise<StreamBounds>>();

  bounds(ref: ShardRef): Promise<StreamBounds> {
    const stream = this.streamOf(ref);
    let asked = this.asking.get(stream);
    if (!asked) {
      asked = this.manager()
        .then((jsm) => jsm.streams.info(stream))
        .then((si) => ({ firstSeq: si.state.first_seq, lastSeq: si.state.last_seq }))
        .finally(() => this.asking.delete(stream));
      this.asking.set(stream, asked);
    }
    return asked;
  }

  async open(ref: ShardRef, epoch: number, start: FeedStart, flow?: FeedFlow): Promise<ShardFeed> {
    const jsm = await this.manager();
    const p = this.pipelineOf(ref);
    const stream = inputStream(p, ref.shard);
    const name = consumerName(ref.pipeline, ref.shard, epoch);
    const filter = shardConsumerFilter(p, ref.shard);
    const config: Partial<ConsumerConfig> = {
      durable_name: name,
      ...(filter ? { filter_subject: filter } : {}),
      ack_policy: AckPolicy.All,
      ...("seq" in start
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: Math.max(1, start.seq) }
        : { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(start.timeMs).toISOString() }),
      max_ack_pending: flow?.maxAckPending ?? this.opts.maxAckPending,
      ack_wait: nanos(this.opts.ackWaitMs),
      num_replicas: 1,
      // A consumer orphaned by a crash is removed by the server after an hour idle.
      inactive_threshold: nanos(3_600_000),
    };
    const home = this.opts.onStreamLeader !== false;
    const leader = home ? await this.leaders.leaderOf(stream) : undefined;
    const placed =
      leader === undefined
        ? { ci: await this.create(jsm, stream, config, name), onLeader: true, leader: "", missed: [] }
        : await this.createOnLeader(jsm, stream, config, ref, epoch, leader);
    const ci = placed.ci;
    if (!placed.onLeader)
      this.opts.onStatus?.({
        stream,
        consumer: ci.name,
        type: "placed_off_leader",
        description: `on ${ci.cluster?.leader} after ${placed.missed.length + 1} creations (${placed.missed.join(", ")}); the stream leader is ${placed.leader}`,
      });
    const consumer = this.js.consumers.getConsumerFromInfo(ci);
    const onStatus = this.opts.onStatus;
    // A lease that re-opens its epoch (its feed failed) may keep another candidate than last
    // time; the last one's feed is closed by then, and its consumer would linger on a follower
    // until the shard's next epoch (and `sluice status` could read it). One still feeding (a
    // prepared open finishing after the lease's own) is left alone.
    const key = `${stream}/${ref.shard}/${epoch}`;
    const previous = this.kept.get(key);
    this.kept.set(key, ci.name);
    if (previous !== undefined && previous !== ci.name && ![...this.feeds].some((f) => f.name === previous))
      void deleteConsumer(jsm, stream, previous);
    const feed = new JetStreamShardFeed(
      ci.name,
      stream,
      home ? ci.cluster?.leader : undefined,
      (f) => this.feeds.delete(f),
      consumer,
      flow?.bufferMessages ?? this.opts.bufferMessages,
      onStatus &&
        ((s) => {
          const { code, description } = s as { code?: unknown; description?: unknown };
          // A pull that expired (408) is routine too: an idle shard's pulls all end that way.
          if (routineStatus.has(s.type) || code === 408) return;
          onStatus({
            stream,
            consumer: ci.name,
            type: s.type,
            ...(typeof code === "number" ? { code } : {}),
            ...(typeof description === "string" ? { description } : {}),
          });
        }),
    );
    this.feeds.add(feed);
    try {
      await feed.start();
    } catch (err) {
      this.feeds.delete(feed);
      throw err;
    }
    // The leader may have moved while the consumer was being created.
    if (feed.server !== undefined && this.leaders.known(stream) !== placed.leader) {
      const now = this.leaders.known(stream);
      if (now !== undefined)
        feed.fail(
          new SluiceError(ErrorCode.Unavailable, `stream leader moved to ${now} during the open`, {
            retryable: true,
          }),
        );
    }
    return feed;
  }

  /**
   * Creates the consumer `name` from `config`. Usually it does not exist yet, and creating it
   * is the only request on the hand-off's path (its reply is the consumer's info, so no second
   * request fetches it). One may survive a failed run, a crash just before a restart at the
   * same epoch, or a hand-off prepared by another worker: then the add fails (the server
   * refuses a create that differs from the existing consumer's config) or returns a consumer
   * that has delivered already, and it is deleted and created afresh from the checkpoint.
   */
  private async create(
    jsm: JetStreamManager,
    stream: string,
    config: Partial<ConsumerConfig>,
    name: string,
  ): Promise<ConsumerInfo> {
    const c = { ...config, durable_name: name };
    const ci = await jsm.consumers.add(stream, c).catch(() => null);
    if (ci && unused(ci)) return ci;
    await jsm.consumers.delete(stream, name).catch(() => false);
    return jsm.consumers.add(stream, c);
  }

  /**
   * Creates this epoch's consumer on the stream leader's server. The server places an R1
   * consumer on a random replica (the leader one time in three on R3), so each round creates
   * `PLACEMENT_CANDIDATES` candidates at once (`consumerName`'s `candidate`), keeps one on the
   * leader and deletes the others in the background: a round costs one creation's time, not a
   * delete and a create per miss. Four rounds all miss with probability (2/3)^12 < 1 %; then
   * the last candidate is kept on its follower and reported (`onStatus`, `placed_off_leader`).
   */
  private async createOnLeader(
    jsm: JetStreamManager,
    stream: string,
    config: Partial<ConsumerConfig>,
    ref: ShardRef,
    epoch: number,
    firstLeader: string,
  ): Promise<{ ci: ConsumerInfo; onLeader: boolean; leader: string; missed: string[] }> {
    let leader = firstLeader;
    let lastError: unknown;
    const placed: string[] = [];
    const rounds = Math.floor(CONSUMER_CANDIDATES / PLACEMENT_CANDIDATES);
    for (let round = 0; round < rounds; round++) {
      // A leader-elected advisory may have been missed: ask the stream again after a round.
      if (round > 0) leader = (await this.leaders.leaderOf(stream, true)) ?? leader;
      const last = round === rounds - 1;
      const names = Array.from({ length: PLACEMENT_CANDIDATES }, (_, k) =>
        consumerName(ref.pipeline, ref.shard, epoch, round * PLACEMENT_CANDIDATES + k),
      );
      const got = await Promise.allSettled(names.map((n) => this.create(jsm, stream, config, n)));
      const made = got.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
      for (const r of got) if (r.status === "rejected") lastError = r.reason;
      if (made.length === 0) throw lastError;
      const onLeader = made.find((ci) => ci.cluster?.leader === undefined || ci.cluster.leader === leader);
      // Every round missed: read a follower rather than not at all (the fingerprint check and
      // a later leader move still apply). Availability never rests on placement.
      const kept = onLeader ?? (last ? made[0] : undefined);
      for (const ci of made) {
        if (ci === kept) continue;
        placed.push(ci.cluster?.leader ?? "?");
        void deleteConsumer(jsm, stream, ci.name);
      }
      if (kept) return { ci: kept, onLeader: onLeader !== undefined, leader, missed: placed };
    }
    throw new SluiceError(ErrorCode.Unavailable, "no consumer candidate created", { retryable: true });
  }

  async removeOlderEpochs(ref: ShardRef, epoch: number): Promise<void> {
    const jsm = await this.manager();
    const stream = this.streamOf(ref);
    const stale: string[] = [];
    // NAMES, not LIST: see `consumerNames`.
    for (const name of await consumerNames(this.nc, stream)) {
      const e = consumerEpoch(ref.pipeline, ref.shard, name);
      if (e !== null && e < epoch) stale.push(name);
    }
    for (const key of this.kept.keys()) {
      const [s, shard, e] = key.split("/");
      if (s === stream && Number(shard) === ref.shard && Number(e) < epoch) this.kept.delete(key);
    }
    await Promise.all(stale.map((n) => deleteConsumer(jsm, stream, n)));
  }

  async remove(ref: ShardRef, epoch: number): Promise<void> {
    const jsm = await this.manager();
    const stream = this.streamOf(ref);
    const first = consumerName(ref.pipeline, ref.shard, epoch);
    // The epoch's consumer may be any of its candidates (`createOnLeader`).
    const names = await consumerNames(this.nc, stream).catch(() => [first]);
    const mine = names.filter((n) => consumerEpoch(ref.pipeline, ref.shard, n) === epoch);
    await Promise.all(mine.map((n) => jsm.consumers.delete(stream, n).catch(() => false)));
  }
}

/**
 * Deletes a consumer, never rejecting: one left behind is removed by the shard's next epoch, or
 * by the server once idle for `inactive_threshold`.
 */
export function deleteConsumer(jsm: JetStreamManager, stream: string, name: string): Promise<void> {
  return jsm.consumers.delete(stream, name).then(
    () => undefined,
    () => undefined,
  );
}
