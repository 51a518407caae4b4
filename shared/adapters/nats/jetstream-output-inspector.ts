/**
 * The read side of the JetStream output sink (`SinkInspector`): a shard's checkpoint is the
 * newest message on its checkpoint subject; its rows are the messages on its data subject, in
 * stream order, with their store time as commit time.
 */
import { DeliverPolicy, type JetStreamManager, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import type { CommittedRow, RowQuery, ShardCheckpoint, SinkInspector } from "../../contract/ports.js";
import { Headers, outputDataSubject, outputStream } from "../../contract/wire.js";
import { JetStreamOutputStore } from "./jetstream-output-store.js";

const dec = new TextDecoder();

export class JetStreamOutputInspector implements SinkInspector {
  private readonly store: JetStreamOutputStore;
  private jsm: JetStreamManager | undefined;

  constructor(
    private readonly nc: NatsConnection,
    /** The pipelines (and their shard counts) whose output this reads. */
    private readonly pipelines: ReadonlyArray<{ name: string; shards: number }>,
  ) {
    this.store = new JetStreamOutputStore(nc);
  }

  private async manager(): Promise<JetStreamManager> {
    this.jsm ??= await jetstreamManager(this.nc, { timeout: 5_000, checkAPI: false });
    return this.jsm;
  }

  async checkpoints(): Promise<ShardCheckpoint[]> {
    const out: ShardCheckpoint[] = [];
    for (const p of this.pipelines) {
      const got = await Promise.all(
        Array.from({ length: p.shards }, (_, shard) =>
          this.store.lastCheckpoint({ pipeline: p.name, shard }).catch(() => null),
        ),
      );
      got.forEach((g, shard) => {
        if (g) out.push({ ...g.checkpoint, pipeline: p.name, shard });
      });
    }
    return out;
  }

  /** Records per data subject of the pipeline (`sluice.out.P.<shard>`). */
  private async counts(pipeline: string, shard?: number): Promise<Record<string, number>> {
    const jsm = await this.manager();
    const filter = shard === undefined ? `sluice.out.${pipeline}.*` : outputDataSubject(pipeline, shard);
    const info = await jsm.streams
      .info(outputStream(pipeline), { subjects_filter: filter })
      .catch(() => null);
    return info?.state.subjects ?? {};
  }

  async rowCount(pipeline: string): Promise<number> {
    return Object.values(await this.counts(pipeline)).reduce((a, b) => a + b, 0);
  }

  async rows(pipeline: string, q: RowQuery = {}): Promise<CommittedRow[]> {
    const total = Object.values(await this.counts(pipeline, q.shard)).reduce((a, b) => a + b, 0);
    if (total === 0) return [];
    const consumer = await jetstream(this.nc).consumers.get(outputStream(pipeline), {
      filter_subjects: [
        q.shard === undefined ? `sluice.out.${pipeline}.*` : outputDataSubject(pipeline, q.shard),
      ],
      deliver_policy: DeliverPolicy.All,
      ...(q.values ? {} : { headers_only: true }),
    });
    const out: CommittedRow[] = [];
    const it = await consumer.consume({ max_messages: 4_096 });
    let seen = 0;
    for await (const m of it) {
      seen++;
      const committedAt = Math.floor(Number(m.info.timestampNanos) / 1e6);
      if (q.sinceMs === undefined || committedAt >= q.sinceMs) {
        const h = m.headers;
        out.push({
          recordId: h?.get(Headers.msgId) ?? "",
          key: h?.get(Headers.key) ?? "",
          shard: Number(h?.get(Headers.shard)),
          sourceSeq: Number(h?.get(Headers.sourceSeq)),
          epoch: Number(h?.get(Headers.epoch)),
          worker: h?.get(Headers.worker) ?? "",
          committedAt,
          order: m.seq,
          ...(q.values ? { value: JSON.parse(dec.decode(m.data)) as Record<string, unknown> } : {}),
          ...(q.values && h?.has(Headers.lineage)
            ? { lineage: JSON.parse(h.get(Headers.lineage)) as Record<string, number> }
            : {}),
        });
      }
      if (seen >= total) break;
    }
    await it.close().catch(() => undefined);
    return out;
  }

  async close(): Promise<void> {}
}
