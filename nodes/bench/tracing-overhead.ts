/**
 * What tracing costs the producer, measured three ways in one run on the same stream:
 * - off: no tracer provider registered (the default: every span is the API's no-op);
 * - sampled: a provider with `traceidratio` (1 % by default), so 99 % of publishes make a
 *   non-recording span and send no trace header;
 * - always_on: every publish records a span, injects `traceparent` and is exported.
 *
 * Spans go through a BatchSpanProcessor (as in the nodes) to an exporter that only counts
 * them, or, with `otlpUrl`, to an OTLP/HTTP receiver. The three modes run interleaved over
 * `rounds` rounds (after one warm-up round per mode that is not counted), so JIT warm-up and
 * a growing stream do not favour whichever runs last.
 *
 * Must be called with no tracer provider registered; it registers and removes its own.
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { ExportResultCode } from "@opentelemetry/core";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import {
  AlwaysOnSampler,
  BatchSpanProcessor,
  type ReadableSpan,
  type Sampler,
  type SpanExporter,
  TraceIdRatioBasedSampler,
} from "@opentelemetry/sdk-trace-base";
import { encodeRecord } from "../../shared/contract/codec.js";
import { Producer, type PublishResult } from "../../shared/producer/producer.js";
import { registerTracing, sluiceResource } from "../../shared/telemetry/telemetry.js";
import { getTracer } from "../../shared/telemetry/tracing.js";

export type TracingMode = "off" | "sampled" | "alwaysOn";

export interface TracingOverheadOptions {
  /** Pipeline whose ingest subjects a stream captures. */
  pipeline: string;
  /** Records published per mode (over all counted rounds). */
  count: number;
  /** Ratio of the sampled mode. Default 0.01. */
  ratio?: number;
  /** Counted rounds; each publishes count / rounds records per mode. Default 4. */
  rounds?: number;
  /** Records per mode in the uncounted warm-up round. Default count / rounds / 2. */
  warmup?: number;
  /** Producer window. */
  window?: number;
  /** Export to this OTLP/HTTP endpoint (base URL; /v1/traces is appended) instead of a counting no-op. */
  otlpUrl?: string;
  /** Id prefix; must be unique per call (ids are deduplicated by the stream). */
  prefix?: string;
}

export interface ModeResult {
  records: number;
  seconds: number;
  perSecond: number;
  /** Spans the exporter received (publish spans). */
  spansExported: number;
}

export interface TracingOverheadResult {
  off: ModeResult;
  sampled: ModeResult;
  alwaysOn: ModeResult;
  /** Throughput relative to off: 1 = no cost, 0.9 = 10 % fewer records/s. */
  ratios: { sampled: number; alwaysOn: number };
  ratio: number;
  exporter: "counting" | "otlp";
}

/** Accepts every span and only counts it: the instrumentation's own cost, without the wire. */
class CountingExporter implements SpanExporter {
  count = 0;
  export(spans: ReadableSpan[], done: (r: { code: ExportResultCode }) => void): void {
    this.count += spans.length;
    done({ code: ExportResultCode.SUCCESS });
  }
  async shutdown(): Promise<void> {}
  async forceFlush(): Promise<void> {}
}

const body = "x".repeat(192);

/** Publishes `n` records, yielding to I/O every 256 so PubAcks are read as they come; ms. */
async function publish(
  nc: NatsConnection,
  o: TracingOverheadOptions,
  tag: string,
  n: number,
): Promise<number> {
  const producer = new Producer(nc, o.pipeline, {
    window: o.window ?? 2048,
    retries: 5,
    timeoutMs: 3_000,
  });
  let acked = 0;
  const onResult = (r: PublishResult): void => {
    if (r.status === "acked") acked++;
  };
  // Encoded up front: the record's encoding is not what is measured.
  const data = Array.from({ length: n }, (_, i) => encodeRecord({ id: `${tag}-${i}`, n: i, body }));
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const record = { id: `${tag}-${i}`, key: `k${i % 1024}`, data: data[i]! };
    while (!producer.offer(record, onResult)) await producer.ready();
    if (i % 256 === 255) await new Promise((r) => setImmediate(r));
  }
  await producer.close();
  const ms = performance.now() - t0;
  if (acked !== n) throw new Error(`tracing overhead: ${acked} of ${n} publishes acknowledged`);
  return ms;
}

async function runMode(
  nc: NatsConnection,
  o: TracingOverheadOptions,
  mode: TracingMode,
  tag: string,
  n: number,
): Promise<{ ms: number; spans: number }> {
  if (mode === "off") return { ms: await publish(nc, o, tag, n), spans: 0 };
  const sampler: Sampler =
    mode === "sampled" ? new TraceIdRatioBasedSampler(o.ratio ?? 0.01) : new AlwaysOnSampler();
  const counting = new CountingExporter();
  const exporter = o.otlpUrl ? new OTLPTraceExporter({ url: `${o.otlpUrl}/v1/traces` }) : counting;
  let exported = 0;
  const tally: SpanExporter = {
    export: (spans, done) => {
      exported += spans.length;
      exporter.export(spans, done);
    },
    shutdown: () => exporter.shutdown(),
    forceFlush: () => exporter.forceFlush?.() ?? Promise.resolve(),
  };
  const tracing = registerTracing({
    resource: sluiceResource("sluice-bench", "tracing-overhead"),
    sampler,
    // A queue deep enough that always_on drops nothing at tens of thousands of spans/s.
    spanProcessors: [new BatchSpanProcessor(tally, { maxQueueSize: 65_536, maxExportBatchSize: 1_024 })],
  });
  try {
    const ms = await publish(nc, o, tag, n);
    await tracing.forceFlush();
    return { ms, spans: exported };
  } finally {
    await tracing.shutdown();
  }
}

export async function measureTracingOverhead(
  nc: NatsConnection,
  opts: TracingOverheadOptions,
): Promise<TracingOverheadResult> {
  if (getTracer().startSpan("probe").isRecording()) {
    throw new Error("measureTracingOverhead needs no tracer provider registered");
  }
  const rounds = Math.max(1, opts.rounds ?? 4);
  const perRound = Math.max(1, Math.floor(opts.count / rounds));
  const warmup = opts.warmup ?? Math.max(1, Math.floor(perRound / 2));
  const prefix = opts.prefix ?? `to-${Date.now().toString(36)}`;
  const modes: TracingMode[] = ["off", "sampled", "alwaysOn"];
  const totals: Record<TracingMode, { ms: number; records: number; spans: number }> = {
    off: { ms: 0, records: 0, spans: 0 },
    sampled: { ms: 0, records: 0, spans: 0 },
    alwaysOn: { ms: 0, records: 0, spans: 0 },
  };
  for (const mode of modes) await runMode(nc, opts, mode, `${prefix}-w-${mode}`, warmup);
  for (let r = 0; r < rounds; r++) {
    // Rotate the order every round: no mode always runs first or last.
    for (let k = 0; k < modes.length; k++) {
      const mode = modes[(r + k) % modes.length]!;
      const res = await runMode(nc, opts, mode, `${prefix}-${r}-${mode}`, perRound);
      totals[mode].ms += res.ms;
      totals[mode].records += perRound;
      totals[mode].spans += res.spans;
    }
  }
  const result = (m: TracingMode): ModeResult => ({
    records: totals[m].records,
    seconds: totals[m].ms / 1000,
    perSecond: totals[m].records / (totals[m].ms / 1000),
    spansExported: totals[m].spans,
  });
  const off = result("off");
  const sampled = result("sampled");
  const alwaysOn = result("alwaysOn");
  return {
    off,
    sampled,
    alwaysOn,
    ratios: { sampled: sampled.perSecond / off.perSecond, alwaysOn: alwaysOn.perSecond / off.perSecond },
    ratio: opts.ratio ?? 0.01,
    exporter: opts.otlpUrl ? "otlp" : "counting",
  };
}
