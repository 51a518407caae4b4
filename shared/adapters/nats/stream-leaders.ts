/**
 * Which server leads each stream, kept current by JetStream's leader-elected advisories.
 *
 * Shard consumers are R1, and an R1 consumer reads its own server's replica of the stream.
 * nats-server 2.9.10 places it on a random replica, and a follower's replica is not always
 * the history the producers were acknowledged from: one that has just restarted is behind
 * (a consumer created there starts at its last record, not where asked), and one that was cut
 * off as leader can keep records its quorum never acknowledged and number every later record
 * differently (see README, "A stream whose history changed"). The stream leader's replica is
 * the acknowledged history by definition, so shard consumers live there and move when it moves.
 *
 * Advisories are core NATS messages: a client connected to a server cut off from the others
 * misses them. So the leaders of the streams asked about are also re-read every `refreshMs`.
 */
import type { JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import { streamLeaderElected } from "../../contract/wire.js";

export type LeaderChange = (stream: string, leader: string) => void;

export class JetStreamStreamLeaders {
  private readonly byStream = new Map<string, string>();
  private readonly listeners = new Set<LeaderChange>();
  private sub: Subscription | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly manager: () => Promise<JetStreamManager>,
    /** How often the known streams' leaders are re-read, ms (0: never). */
    private readonly refreshMs = 2_000,
  ) {}

  /** Subscribes to the advisories (once); a closed connection ends the subscription. */
  private listen(): void {
    if (this.sub || this.nc.isClosed()) return;
    if (this.refreshMs > 0) {
      this.timer = setInterval(() => {
        if (this.nc.isClosed()) return this.close();
        for (const stream of this.byStream.keys()) void this.leaderOf(stream, true).catch(() => undefined);
      }, this.refreshMs);
      this.timer.unref?.();
    }
    this.sub = this.nc.subscribe(streamLeaderElected("*"), {
      callback: (err, m) => {
        if (err) return;
        let a: { stream?: unknown; leader?: unknown };
        try {
          a = m.json();
        } catch {
          return;
        }
        if (typeof a.stream !== "string" || typeof a.leader !== "string" || a.leader === "") return;
        this.set(a.stream, a.leader);
      },
    });
  }

  private set(stream: string, leader: string): void {
    if (this.byStream.get(stream) === leader) return;
    this.byStream.set(stream, leader);
    for (const fn of this.listeners) fn(stream, leader);
  }

  /**
   * The server leading `stream`, from the advisories or (first use, or `fresh`) from the
   * stream's info. Undefined when the stream has no leader right now or is not clustered.
   */
  async leaderOf(stream: string, fresh = false): Promise<string | undefined> {
    this.listen();
    const cached = this.byStream.get(stream);
    if (cached !== undefined && !fresh) return cached;
    const jsm = await this.manager();
    const si = await jsm.streams.info(stream).catch(() => null);
    const leader = si?.cluster?.leader;
    if (leader) this.set(stream, leader);
    return leader || cached;
  }

  /** The leader last learnt, without asking. */
  known(stream: string): string | undefined {
    return this.byStream.get(stream);
  }

  /** Told when a stream's leader is learnt or changes; returns the unsubscribe. */
  onChange(fn: LeaderChange): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  close(): void {
    clearInterval(this.timer);
    this.timer = undefined;
    this.sub?.unsubscribe();
    this.sub = undefined;
    this.listeners.clear();
  }
}
