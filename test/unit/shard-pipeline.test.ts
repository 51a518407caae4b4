import { describe, expect, it } from "vitest";
import { waitUntil } from "../../nodes/cli/wait.js";
import { consumerStalled } from "../../shared/adapters/nats/jetstream-shard-feed.js";
import { MemorySink } from "../../shared/adapters/sink/memory-sink.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import { ErrorCode, SluiceError } from "../../shared/contract/errors.js";
import type { ShardRef } from "../../shared/contract/ownership.js";
import type {
  HistoryMismatchReport,
  StreamBehindReport,
  StreamTrimmedReport,
} from "../../shared/contract/pipeline-reports.js";
import type {
  FeedFlow,
  FeedStart,
  ShardFeed,
  ShardSource,
  SourceMessage,
  StreamBounds,
} from "../../shared/contract/ports.js";
import { type BreakerState, closedBreaker } from "../../shared/core/circuit-breaker.js";
import type {
  PipelineHooks,
  PipelinePorts,
  PipelineSettings,
} from "../../shared/pipeline/pipeline-options.js";
import { ShardPipeline } from "../../shared/pipeline/shard-pipeline.js";

const REF: ShardRef = { pipeline: "demo", shard: 0 };

/** One replica's view of a shard: record ids in stream order, sequence i + 1, stored at 10 ms apart. */
type View = string[];

function message(id: string, index: number, deliverySeq: number): SourceMessage {
  return {
    seq: index + 1,
    deliverySeq,
    subject: `sluice.in.demo.0.k${id}`,
    data: encodeRecord({ id }),
    headers: { "Nats-Msg-Id": id },
    timestampMs: 1_000_000 + index * 10,
    token: index,
  };
}

/**
 * A shard source whose stream can change its history between consumers, the way a JetStream
 * replica that diverged after a fault numbers the same records differently.
 */
class ReplicaSource implements ShardSource {
  view: View = [];
  opened: FeedStart[] = [];
  flows: Array<FeedFlow | undefined> = [];
  /** The largest `max` any `next` was asked for. */
  largestPull = 0;
  /** Most records a feed delivers unacknowledged, like a consumer's max_ack_pending. */
  maxAckPending = Number.POSITIVE_INFINITY;
  /** The first sequence the stream reports holding (its limits removed the ones before). */
  firstSeq = 1;

  async open(_ref: ShardRef, _epoch: number, start: FeedStart, flow?: FeedFlow): Promise<ShardFeed> {
    this.opened.push(start);
    this.flows.push(flow);
    const self = this;
    const view = this.view;
    let pos =
      "seq" in start
        ? Math.max(0, start.seq - 1)
        : view.findIndex((_, i) => message("", i, 0).timestampMs! >= start.timeMs);
    if (pos < 0) pos = view.length;
    let delivered = 0;
    /** Position after the last acked record (AckPolicy all). */
    let acked = pos;
    return {
      failure: null,
      async next(max: number, waitMs: number): Promise<SourceMessage[]> {
        self.largestPull = Math.max(self.largestPull, max);
        const out: SourceMessage[] = [];
        while (pos < view.length && out.length < max && pos - acked < self.maxAckPending)
          out.push(message(view[pos]!, pos++, ++delivered));
        if (out.length === 0) await new Promise((r) => setTimeout(r, Math.min(waitMs, 5)));
        return out;
      },
      ack(last: SourceMessage) {
        acked = Math.max(acked, last.seq);
      },
      async close() {},
    };
  }
  async removeOlderEpochs(): Promise<void> {}
  async remove(): Promise<void> {}
  async bounds(): Promise<StreamBounds> {
    return { firstSeq: this.firstSeq, lastSeq: this.view.length };
  }
}

/**
 * A pipeline of `REF` at `epoch`, by worker `w<epoch>` unless named, over `ports` (no dead
 * letters unless given), with batches of 3, 5 ms pulls and a lease that stays fresh; `settings`
 * and `hooks` add to or replace those.
 */
function testPipeline(
  epoch: number,
  ports: Pick<PipelinePorts, "sink" | "source"> & Partial<PipelinePorts>,
  settings: Partial<PipelineSettings> = {},
  hooks: Partial<PipelineHooks> = {},
  worker = `w${epoch}`,
): ShardPipeline {
  return new ShardPipeline(
    REF,
    epoch,
    worker,
    { deadLetters: { publish: async () => {} }, ...ports },
    { batchMax: 3, pullWaitMs: 5, ...settings },
    { leaseFresh: () => true, now: () => Date.now(), ...hooks },
  );
}

async function runUntil(
  epoch: number,
  sink: MemorySink,
  source: ReplicaSource,
  lastSeq: number,
  mismatches: HistoryMismatchReport[] = [],
): Promise<void> {
  const p = testPipeline(
    epoch,
    { sink, source },
    { reconcileWindowMs: 1_000 },
    { onHistoryMismatch: (r) => mismatches.push(r) },
  );
  await p.acquire();
  await runToCheckpoint(p, sink, lastSeq);
}

/** Runs an acquired pipeline until the sink's checkpoint reaches `lastSeq`, then drains it. */
async function runToCheckpoint(p: ShardPipeline, sink: MemorySink, lastSeq: number): Promise<void> {
  const run = p.run();
  await waitUntil(
    `the checkpoint at ${lastSeq}`,
    5_000,
    async () => (await sink.checkpoint(REF)).seq >= lastSeq || undefined,
    2,
  );
  await p.drain();
  await run;
}

const ids = (n: number, prefix = "r"): string[] => Array.from({ length: n }, (_, i) => `${prefix}${i + 1}`);
const committedIds = (sink: MemorySink): string[] => sink.stored.map((r) => r.recordId);

describe("ShardPipeline: the checkpoint's record is checked before its sequence is trusted", () => {
  it("same history: the checkpoint's record is skipped, nothing is written twice, no reconciliation", async () => {
    const sink = new MemorySink();
    const source = new ReplicaSource();
    source.view = ids(6);
    await runUntil(1, sink, source, 6);
    source.view = ids(9);
    const mismatches: HistoryMismatchReport[] = [];
    await runUntil(2, sink, source, 9, mismatches);
    expect(mismatches).toEqual([]);
    expect(source.opened.at(-1)).toEqual({ seq: 6 });
    expect(committedIds(sink)).toEqual(ids(9));
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 2, seq: 9, fingerprint: "r9" });
  });

  it("diverged history: reconciles by record id, so nothing is lost or written twice", async () => {
    const sink = new MemorySink();
    const source = new ReplicaSource();
    // Replica A stored r1..r6; replica B stored r7 (a retried publish) between r2 and r3, so
    // every later record sits one sequence further on.
    source.view = ids(6);
    await runUntil(1, sink, source, 6);
    source.view = ["r1", "r2", "r7", "r3", "r4", "r5", "r6", "r8", "r9"];
    const mismatches: HistoryMismatchReport[] = [];
    await runUntil(2, sink, source, 9, mismatches);
    expect(mismatches).toHaveLength(1);
    expect(mismatches[0]).toMatchObject({ checkpointSeq: 6, expected: "r6", foundSeq: 6, found: "r5" });
    const committed = committedIds(sink);
    expect([...committed].sort()).toEqual(ids(9).sort());
    expect(new Set(committed).size).toBe(committed.length);
    expect((await sink.checkpoint(REF)).seq).toBe(9);
  });

  it("without the check, the same divergence loses r7 and writes r6 twice (the sink alone trusts sequences)", async () => {
    const sink = new MemorySink();
    const source = new ReplicaSource();
    source.view = ids(6);
    await runUntil(1, sink, source, 6);
    // The same rows under a checkpoint without a fingerprint (as a sink that keeps none, or one
    // written before fingerprints existed): the next owner cannot check and trusts the sequence.
    const blind = new MemorySink();
    await blind.fence(REF, 1);
    await blind.commit(REF, 1, "w1", sink.stored, 6);
    source.view = ["r1", "r2", "r7", "r3", "r4", "r5", "r6", "r8", "r9"];
    await runUntil(2, blind, source, 9);
    const committed = committedIds(blind);
    expect(committed).not.toContain("r7");
    expect(committed.filter((x) => x === "r6")).toHaveLength(2);
  });
});

describe("ShardPipeline: a checkpoint outside the records its stream holds", () => {
  /**
   * Acquires epoch 2 over `view` (its first `firstSeq - 1` records removed) after epoch 1
   * committed six records; the reports it made.
   */
  async function acquireOver(
    view: View,
    firstSeq = 1,
  ): Promise<Array<StreamBehindReport | StreamTrimmedReport>> {
    const sink = new MemorySink();
    const source = new ReplicaSource();
    source.view = ids(6);
    await runUntil(1, sink, source, 6);
    source.view = view;
    source.firstSeq = firstSeq;
    const reports: Array<StreamBehindReport | StreamTrimmedReport> = [];
    const p = testPipeline(
      2,
      { sink, source },
      {},
      {
        sleep: async () => {},
        onStreamBehind: (r) => reports.push(r),
        onStreamTrimmed: (r) => reports.push(r),
      },
    );
    await p.acquire();
    // The check runs off the acquisition's path: give it its turns.
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    await p.drain();
    return reports;
  }

  it("is reported when the stream holds fewer records than the sink committed (another stream)", async () => {
    expect(await acquireOver(ids(2, "new"))).toEqual([
      { ref: REF, epoch: 2, checkpointSeq: 6, streamLastSeq: 2 },
    ]);
  });

  it("is not reported for the stream that wrote the checkpoint, caught up or grown", async () => {
    expect(await acquireOver(ids(6))).toEqual([]);
    expect(await acquireOver(ids(9))).toEqual([]);
    // Trimmed below the checkpoint only: nothing the shard had not committed is gone.
    expect(await acquireOver(ids(9), 6)).toEqual([]);
  });

  it("reports the records the stream's limits removed before the shard committed them", async () => {
    expect(await acquireOver(ids(9), 9)).toEqual([
      { ref: REF, epoch: 2, checkpointSeq: 6, streamFirstSeq: 9, removedAfterCheckpoint: 2 },
    ]);
    // Only the checkpoint's own record: reported, with nothing lost.
    expect(await acquireOver(ids(9), 7)).toEqual([
      { ref: REF, epoch: 2, checkpointSeq: 6, streamFirstSeq: 7, removedAfterCheckpoint: 0 },
    ]);
    // Everything, the stream purged: first = last + 1.
    expect(await acquireOver(ids(9), 10)).toEqual([
      { ref: REF, epoch: 2, checkpointSeq: 6, streamFirstSeq: 10, removedAfterCheckpoint: 3 },
    ]);
  });
});

describe("ShardPipeline.abandon: a prepared hand-off called off while its consumer is being opened", () => {
  it("resolves only once that consumer exists and its feed is closed, so it can then be deleted for good", async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const events: string[] = [];
    class GatedSource extends ReplicaSource {
      override async open(...args: Parameters<ReplicaSource["open"]>): Promise<ShardFeed> {
        events.push("open asked");
        await gate;
        const feed = await super.open(...args);
        events.push("opened");
        return {
          ...feed,
          close: async () => {
            events.push("closed");
            await feed.close();
          },
        };
      }
    }
    const sink = new MemorySink();
    const source = new GatedSource();
    source.view = ids(3);
    const p = testPipeline(2, { sink, source });
    void p.prepare(sink.checkpoint(REF));
    await waitUntil("the prepared open to be asked", 5_000, async () => events.length > 0 || undefined, 1);
    let abandoned = false;
    const done = p.abandon().then(() => {
      abandoned = true;
    });
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
    expect(abandoned).toBe(false);
    release();
    await done;
    expect(events).toEqual(["open asked", "opened", "closed"]);
  });
});

describe("consumerStalled: when an answering consumer that delivers nothing is recreated", () => {
  const base = {
    idleMs: 6_000,
    buffered: 0,
    numPending: 40,
    ackPending: 0,
    maxAckPending: 4_000,
    stallMs: 5_000,
  };
  it("is stalled: idle past the bound, nothing buffered, records pending, room to deliver", () => {
    expect(consumerStalled(base)).toBe(true);
  });
  it("is not stalled while idle briefly, with records buffered, with none pending, or at its ack bound", () => {
    expect(consumerStalled({ ...base, idleMs: 4_999 })).toBe(false);
    expect(consumerStalled({ ...base, buffered: 1 })).toBe(false);
    expect(consumerStalled({ ...base, numPending: 0 })).toBe(false);
    expect(consumerStalled({ ...base, ackPending: 4_000 })).toBe(false);
  });
});

describe("ShardPipeline: drain", () => {
  it("wakes a pull that waits for records, so a hand-off does not sit out the pull's wait", async () => {
    let waiter: (() => void) | undefined;
    let woken = 0;
    const source: ShardSource = {
      async open() {
        return {
          failure: null,
          // Nothing ever arrives: without `wake` a pull would wait its full `waitMs`.
          next: (_max: number, waitMs: number) =>
            new Promise<SourceMessage[]>((resolve) => {
              const t = setTimeout(() => resolve([]), waitMs);
              waiter = () => {
                clearTimeout(t);
                resolve([]);
              };
            }),
          ack() {},
          wake() {
            woken++;
            waiter?.();
          },
          async close() {},
        };
      },
      async removeOlderEpochs() {},
      async remove() {},
    };
    const p = testPipeline(1, { sink: new MemorySink(), source }, { batchMax: 10, pullWaitMs: 60_000 });
    await p.acquire();
    const run = p.run();
    const deadline = Date.now() + 5_000;
    while (!waiter) {
      if (Date.now() > deadline) throw new Error("the pipeline never pulled");
      await new Promise((r) => setTimeout(r, 1));
    }
    const t0 = Date.now();
    await p.drain();
    await run;
    expect(woken).toBe(1);
    expect(Date.now() - t0).toBeLessThan(5_000);
  });
});

describe("ShardPipeline: a shard's share of the worker's in-flight budget", () => {
  const settings = { batchMax: 1000, pullWaitMs: 5, maxAckPending: 4000, maxBufferedRecords: 65_536 };

  async function acquireWith(owned: number | undefined): Promise<ReplicaSource> {
    const source = new ReplicaSource();
    source.view = ids(3_000);
    const sink = new MemorySink();
    const p = testPipeline(1, { sink, source }, settings, {
      ...(owned === undefined ? {} : { shardsOwned: () => owned }),
    });
    await p.acquire();
    await runToCheckpoint(p, sink, 3_000);
    return source;
  }

  it("a worker owning 64 shards gives each consumer 1/64 of the budget and batches within half of it", async () => {
    const source = await acquireWith(64);
    expect(source.flows).toEqual([{ maxAckPending: 1024, bufferMessages: 512 }]);
    expect(source.largestPull).toBe(512);
  });

  it("a worker owning few shards keeps the configured bounds", async () => {
    const source = await acquireWith(4);
    expect(source.flows).toEqual([{ maxAckPending: 4000, bufferMessages: 2000 }]);
    expect(source.largestPull).toBe(1000);
  });

  it("without a count of owned shards the source's own bounds apply", async () => {
    const source = await acquireWith(undefined);
    expect(source.flows).toEqual([undefined]);
  });
});

describe("ShardPipeline: a hand-off prepared while the previous owner drains", () => {
  async function handOff(hint: { seq: number; fingerprint?: string }, maxAckPending?: number) {
    const sink = new MemorySink();
    const source = new ReplicaSource();
    source.view = ids(6);
    await runUntil(1, sink, source, 6);
    source.view = ids(9);
    if (maxAckPending !== undefined) source.maxAckPending = maxAckPending;
    const mismatches: HistoryMismatchReport[] = [];
    const p = testPipeline(2, { sink, source }, {}, { onHistoryMismatch: (r) => mismatches.push(r) });
    p.prepare(Promise.resolve({ epoch: 1, ...hint }));
    await waitUntil("the prepared consumer", 3_000, () => source.opened.length === 2 || undefined, 2);
    const acquired = await p.acquire();
    await runToCheckpoint(p, sink, 9);
    return { sink, source, acquired, mismatches };
  }

  it("opens the consumer before the lease is acquired", async () => {
    const sink = new MemorySink();
    const source = new ReplicaSource();
    const p = testPipeline(2, { sink, source });
    p.prepare(Promise.resolve({ epoch: 1, seq: 0 }));
    await waitUntil("the prepared consumer", 3_000, () => source.opened.length === 1 || undefined, 2);
    expect(source.opened).toEqual([{ seq: 1 }]);
    p.abandon();
  });

  it("records committed before the fence that fill the consumer's in-flight bound are acked", async () => {
    // Five records (1-5) lie between the hint and the fenced checkpoint (6), more than the
    // consumer delivers unacknowledged: skipped without an ack, the shard would stall.
    const { sink, acquired } = await handOff({ seq: 1, fingerprint: "r1" }, 2);
    expect(acquired.overlapped).toBe(true);
    expect(committedIds(sink)).toEqual(ids(9));
  });

  it("a hint behind the checkpoint: records the previous owner committed meanwhile are skipped", async () => {
    const { sink, source, acquired, mismatches } = await handOff({ seq: 3, fingerprint: "r3" });
    expect(acquired.overlapped).toBe(true);
    expect(mismatches).toEqual([]);
    expect(source.opened.at(-1)).toEqual({ seq: 3 });
    expect(committedIds(sink)).toEqual(ids(9));
    expect(await sink.checkpoint(REF)).toEqual({ epoch: 2, seq: 9, fingerprint: "r9" });
  });

  it("a hint ahead of the checkpoint (a sink restored from a backup) is not trusted", async () => {
    const { sink, source, acquired } = await handOff({ seq: 8, fingerprint: "r8" });
    expect(acquired.overlapped).toBe(false);
    expect(source.opened.slice(-2)).toEqual([{ seq: 8 }, { seq: 6 }]);
    expect(committedIds(sink)).toEqual(ids(9));
  });
});

describe("ShardPipeline: a consumer that opens after its lease ended", () => {
  /** A source whose `open` waits until released, counting the feeds it opened and closed. */
  function gatedSource() {
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const state = { opened: 0, closed: 0, release, asked: 0 };
    const source: ShardSource = {
      async open() {
        state.asked++;
        await gate;
        state.opened++;
        return {
          failure: null,
          next: async () => [],
          ack() {},
          async close() {
            state.closed++;
          },
        };
      },
      async removeOlderEpochs() {},
      async remove() {},
    };
    return { source, state };
  }

  const pipelineOn = (source: ShardSource) =>
    testPipeline(1, { sink: new MemorySink(), source }, { batchMax: 10 });

  it("is closed when the lease was fenced while the consumer was being created", async () => {
    const { source, state } = gatedSource();
    const p = pipelineOn(source);
    const acquiring = p.acquire();
    await waitUntil("the consumer to be asked for", 3_000, () => state.asked === 1 || undefined, 1);
    p.abandon();
    state.release();
    await acquiring;
    expect(state.opened).toBe(1);
    expect(state.closed).toBe(1);
    // Nothing left to run: the lease is over.
    await expect(p.run()).resolves.toMatchObject({ type: "failed" });
  });

  it("is closed when the lease was drained while the consumer was being created", async () => {
    const { source, state } = gatedSource();
    const p = pipelineOn(source);
    const acquiring = p.acquire();
    await waitUntil("the consumer to be asked for", 3_000, () => state.asked === 1 || undefined, 1);
    const draining = p.drain();
    state.release();
    await Promise.all([acquiring, draining]);
    expect(state.closed).toBe(state.opened);
  });
});

describe("ShardPipeline: a sink that fails for a while", () => {
  /** A memory sink whose commits fail (retryably) while `down` is true, counting attempts. */
  class FlakySink extends MemorySink {
    down = true;
    attempts = 0;
    override async commit(...args: Parameters<MemorySink["commit"]>): ReturnType<MemorySink["commit"]> {
      this.attempts++;
      if (this.down) throw new SluiceError(ErrorCode.Unavailable, "database restarting", { retryable: true });
      return super.commit(...args);
    }
  }

  it("retries the same batch until the sink answers: the shard stalls, never skips, and the breaker paces it", async () => {
    const sink = new FlakySink();
    const source = new ReplicaSource();
    source.view = ids(6);
    let breaker: BreakerState = closedBreaker;
    const retries: Array<{ attempt: number; breaker: string }> = [];
    const p = testPipeline(
      1,
      { sink, source },
      {},
      {
        sleep: (ms) => new Promise((r) => setTimeout(r, Math.min(ms, 20))),
        breaker: { get: () => breaker, set: (b) => (breaker = b) },
        onCommitRetry: (r) => retries.push({ attempt: r.attempt, breaker: r.breaker.kind }),
      },
    );
    await p.acquire();
    const run = p.run();
    await waitUntil("several failed attempts", 5_000, () => (sink.attempts >= 8 ? true : undefined), 2);
    // Nothing was skipped: the checkpoint has not moved while the sink was down.
    expect((await sink.checkpoint(REF)).seq).toBe(0);
    expect(retries.some((r) => r.breaker === "open")).toBe(true);
    sink.down = false;
    await waitUntil(
      "the checkpoint at 6",
      5_000,
      async () => ((await sink.checkpoint(REF)).seq >= 6 ? true : undefined),
      2,
    );
    await p.drain();
    await run;
    expect(committedIds(sink)).toEqual(ids(6));
    expect(breaker).toEqual(closedBreaker);
  });

  it("a commit the sink refuses for good ends the run (the lease re-acquires), not a retry loop", async () => {
    const sink = new MemorySink();
    const source = new ReplicaSource();
    source.view = ids(3);
    await sink.fence(REF, 5);
    const p = testPipeline(
      4,
      { sink, source },
      {},
      { sleep: (ms) => new Promise((r) => setTimeout(r, ms)) },
      "w1",
    );
    await expect(p.acquire()).rejects.toMatchObject({ code: ErrorCode.Fenced });
  });
});

describe("ShardPipeline: the audit row of every batch", () => {
  it("names each commit's sequences, epoch, worker, rows, dead letters and config revision", async () => {
    const sink = new MemorySink();
    const source = new ReplicaSource();
    // The third record has no id: dead-lettered, and counted in its batch's row.
    source.view = ["r1", "r2", "", "r4", "r5", "r6", "r7"];
    const dead: number[] = [];
    const p = testPipeline(
      4,
      { sink, source, deadLetters: { publish: async (d) => void dead.push(...d.map((x) => x.seq)) } },
      { reconcileWindowMs: 1_000 },
      { configRevision: "rev-x" },
    );
    await p.acquire();
    await runToCheckpoint(p, sink, 7);
    expect(dead).toEqual([3]);
    const row = (firstSeq: number, lastSeq: number, rows: number, deadLettered = 0) => ({
      pipeline: "demo",
      shard: 0,
      epoch: 4,
      worker: "w4",
      firstSeq,
      lastSeq,
      rows,
      late: 0,
      deadLettered,
      deduplicated: 0,
      configRevision: "rev-x",
      committedAt: expect.any(Number),
    });
    expect(sink.audit).toEqual([row(1, 3, 2, 1), row(4, 6, 3), row(7, 7, 1)]);
  });
});
