/** Event time and lateness: the stage's rule, its state across batches, crashes and owners, and the sinks' late table. */
import { describe, expect, it } from "vitest";
import { MemorySink } from "../../shared/adapters/sink/memory-sink.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import { parseConfig } from "../../shared/contract/config.js";
import { ErrorCode } from "../../shared/contract/errors.js";
import type { ShardRef } from "../../shared/contract/ownership.js";
import type { DeadLetter, SourceMessage } from "../../shared/contract/ports.js";
import { BatchCommitter } from "../../shared/pipeline/batch-committer.js";
import { HistoryGuard } from "../../shared/pipeline/history-guard.js";
import { pipelineStages } from "../../shared/pipeline/pipeline-stages.js";
import type { PipelineRecord, StageContext } from "../../shared/pipeline/stage.js";
import { StageChain } from "../../shared/pipeline/stage-chain.js";
import { decodeStage } from "../../shared/pipeline/stages/decode-stage.js";
import {
  EVENT_TIME_MAX_KEY,
  EventTimeStage,
  eventTimeOf,
} from "../../shared/pipeline/stages/event-time-stage.js";
import { CrashOnce } from "../kit/crash-once-sink.js";

const REF: ShardRef = { pipeline: "crm", shard: 0 };

function message(seq: number, value: Record<string, unknown>): SourceMessage {
  return {
    seq,
    deliverySeq: seq,
    subject: `sluice.in.crm.0.k${seq}`,
    data: encodeRecord(value),
    headers: { "Nats-Msg-Id": `r${seq}` },
    timestampMs: 1_000 + seq,
    token: seq,
  };
}

const record = (seq: number, value: Record<string, unknown>): PipelineRecord => ({
  recordId: `r${seq}`,
  key: `k${seq}`,
  sourceSeq: seq,
  value,
  message: message(seq, value),
});

describe("eventTimeOf", () => {
  it("reads milliseconds (a number or a CBOR integer of any width) and ISO-8601 text", () => {
    expect(eventTimeOf(1_700_000_000_123)).toBe(1_700_000_000_123);
    expect(eventTimeOf(1_700_000_000_123n)).toBe(1_700_000_000_123);
    expect(eventTimeOf(12.9)).toBe(12);
    expect(eventTimeOf("2026-12-03T10:00:00.5+01:00")).toBe(Date.parse("2026-12-03T09:00:00.500Z"));
    expect(eventTimeOf("2026-12-03")).toBe(Date.parse("2026-12-03T00:00:00Z"));
  });

  it("says why anything else is not an event time", () => {
    expect(eventTimeOf(undefined)).toBe("absent");
    expect(eventTimeOf(null)).toMatch(/null is not/);
    expect(eventTimeOf("1700000000")).toMatch(/is not ISO-8601 text/);
    expect(eventTimeOf("2026-02-30")).toMatch(/is not ISO-8601 text/);
    expect(eventTimeOf(Number.NaN)).toMatch(/is not a time/);
    expect(eventTimeOf(10n ** 20n)).toMatch(/out of range/);
    expect(eventTimeOf(1e16)).toMatch(/out of range/);
    expect(eventTimeOf({ at: 1 })).toMatch(/object is not/);
  });
});

describe("event-time stage", () => {
  const run = (stage: EventTimeStage, times: unknown[], state: Record<string, number> = {}) => {
    const next: Record<string, string | number | boolean> = {};
    const ctx: StageContext = { ref: REF, shards: undefined, state, next };
    const out = stage.process(
      times.map((t, i) => record(i + 1, { at: t })),
      ctx,
    );
    return {
      late: out.map((d) =>
        d.kind === "keep" ? (d.record.late ? `late<${d.record.late.watermark}` : "on time") : d.kind,
      ),
      eventTimes: out.map((d) => (d.kind === "keep" ? d.record.eventTime : null)),
      next,
    };
  };

  it("marks late what lies strictly below the highest event time before it less the allowance; a first record never", () => {
    const stage = new EventTimeStage("at", 5);
    const r = run(stage, [100, 90, 96, 95, 94, 200, 194, 195, 300]);
    expect(r.late).toEqual([
      "on time",
      "late<95",
      "on time",
      "on time",
      "late<95",
      "on time",
      "late<195",
      "on time",
      "on time",
    ]);
    expect(r.next).toEqual({ [EVENT_TIME_MAX_KEY]: 300 });
  });

  it("starts from the highest event time committed with the checkpoint, so a batch decides alike on any owner", () => {
    const stage = new EventTimeStage("at", 5);
    const first = run(stage, [100, 50], { [EVENT_TIME_MAX_KEY]: 120 });
    expect(first.late).toEqual(["late<115", "late<115"]);
    expect(first.next).toEqual({ [EVENT_TIME_MAX_KEY]: 120 });
    // The same batch from the same state: the same decisions.
    expect(run(stage, [100, 50], { [EVENT_TIME_MAX_KEY]: 120 })).toEqual(first);
  });

  it("counts no redelivery at or below the committed sequence: it was counted, or dead-lettered, before", () => {
    const stage = new EventTimeStage("at", 5);
    const next: Record<string, string | number | boolean> = {};
    const out = stage.process([record(7, { at: 500 }), record(8, { at: 100 })], {
      ref: REF,
      shards: undefined,
      state: { [EVENT_TIME_MAX_KEY]: 120 },
      next,
      committedSeq: 7,
    });
    expect(out.map((d) => (d.kind === "keep" ? (d.record.late ? "late" : "on time") : d.kind))).toEqual([
      "on time",
      "late",
    ]);
    expect(next).toEqual({ [EVENT_TIME_MAX_KEY]: 120 });
  });

  it("dead-letters a record without a readable event time, which moves nothing", () => {
    const stage = new EventTimeStage("at", 5);
    const out = stage.process([record(1, { at: "soon" }), record(2, {})], {
      ref: REF,
      shards: undefined,
      state: {},
      next: {},
    });
    expect(out.map((d) => (d.kind === "reject" ? d.rejection.code : d.kind))).toEqual([
      ErrorCode.EventTimeInvalid,
      ErrorCode.EventTimeInvalid,
    ]);
    expect(out[0]).toMatchObject({ rejection: { message: 'event time at: "soon" is not ISO-8601 text' } });
  });

  it("without lateness reads event times, marks nothing late and moves no state", () => {
    const r = run(new EventTimeStage("at", undefined), [100, 1, "1970-01-01T00:00:00.050Z"]);
    expect(r.late).toEqual(["on time", "on time", "on time"]);
    expect(r.eventTimes).toEqual([100, 1, 50]);
    expect(r.next).toEqual({});
  });

  it("runs before dedupe, which then goes by the event time", () => {
    const p = parseConfig({
      pipelines: [
        {
          name: "crm",
          eventTime: "at",
          lateness: { allowed: "10s" },
          stages: [{ normalise: [{ trim: "id" }] }, { dedupe: { key: "id", window: "1h" } }],
        },
      ],
    }).pipelines[0]!;
    const stages = pipelineStages(p, { now: () => 0 });
    expect(stages.map((s) => s.name)).toEqual(["normalise", "event-time", "dedupe"]);
    const ctx: StageContext = { ref: REF, shards: undefined, state: {}, next: {} };
    let recs = [record(1, { id: "a", at: 5_000 })];
    for (const s of stages)
      recs = (s.process(recs, ctx) as { kind: string; record: PipelineRecord }[]).map((d) => d.record);
    expect(recs[0]!.dedupe).toEqual({ key: "a", at: 5_000 });
  });

  it("is refused without eventTime, and on an output stream", () => {
    expect(() => parseConfig({ pipelines: [{ name: "crm", lateness: { allowed: "10s" } }] })).toThrow(
      /lateness needs eventTime/,
    );
    expect(() =>
      parseConfig({
        sink: { type: "jetstream" },
        pipelines: [{ name: "crm", eventTime: "at", lateness: { allowed: "10s" } }],
      }),
    ).toThrow(/lateness needs a database sink/);
  });
});

describe("late records through a shard's commits", () => {
  const cfg = parseConfig({
    pipelines: [{ name: "crm", eventTime: "at", lateness: { allowed: 10 } }],
  }).pipelines[0]!;

  async function runShard(crashSecond: boolean) {
    const memory = new MemorySink();
    const sink = new CrashOnce(memory);
    const dead: DeadLetter[] = [];
    const chain = new StageChain(decodeStage, pipelineStages(cfg, { now: () => 0 }));
    const committer = async (epoch: number) => {
      const cp = await sink.fence(REF, epoch);
      const c = new BatchCommitter(
        REF,
        epoch,
        `w${epoch}`,
        sink,
        { publish: async (d) => void dead.push(...d) },
        chain,
        new HistoryGuard(REF, epoch, 120_000, (from) => sink.recordIds(REF, from)),
        { leaseFresh: () => true, now: () => 0, configRevision: "rev" },
      );
      c.start(cp);
      return c;
    };
    const feed = { ack: () => undefined } as never;
    const at = [100, 95, 80, 150, 130, 141, 90];
    const msgs = at.map((t, i) => message(i + 1, { at: t }));
    let c = await committer(1);
    await c.commit(feed, msgs.slice(0, 3));
    if (crashSecond) {
      sink.crash = true;
      expect((await c.commit(feed, msgs.slice(3))).ok).toBe(false);
      // The shard's next owner reads the batch again from the committed state.
      c = await committer(2);
    }
    expect((await c.commit(feed, msgs.slice(3))).ok).toBe(true);
    return {
      late: memory.stored.map((r) => (r.late ? `${r.sourceSeq}<${r.late.watermark}` : `${r.sourceSeq}`)),
      lateTable: (await memory.lateRecords("crm")).map((l) => [l.sourceSeq, l.eventTime, l.watermark]),
      state: (await memory.checkpoint(REF)).state,
      audit: memory.audit.map((b) => [b.firstSeq, b.lastSeq, b.rows, b.late]),
      dead: dead.length,
    };
  }

  it("flags by the watermark over stream order, and a crash and a new owner change nothing", async () => {
    const straight = await runShard(false);
    expect(straight.late).toEqual(["1", "2", "3<90", "4", "5<140", "6", "7<140"]);
    expect(straight.lateTable).toEqual([
      [3, 80, 90],
      [5, 130, 140],
      [7, 90, 140],
    ]);
    expect(straight.state).toEqual({ [EVENT_TIME_MAX_KEY]: 150 });
    expect(straight.audit).toEqual([
      [1, 3, 3, 1],
      [4, 7, 4, 2],
    ]);
    expect(straight.dead).toBe(0);
    expect(await runShard(true)).toEqual(straight);
  });
});
