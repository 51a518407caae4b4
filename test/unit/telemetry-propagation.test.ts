/**
 * Trace context in NATS headers: the setters and getters, injection only for recording spans,
 * extraction and link capping, and the batch span of a worker built from it.
 */
import { headers as natsHeaders } from "@nats-io/transport-node";
import { context, ROOT_CONTEXT, SpanKind, trace } from "@opentelemetry/api";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  InMemorySpanExporter,
  ParentBasedSampler,
  SimpleSpanProcessor,
  TraceIdRatioBasedSampler,
} from "@opentelemetry/sdk-trace-base";
import { pino } from "pino";
import { afterEach, describe, expect, it } from "vitest";
import type { SourceMessage } from "../../shared/contract/ports.js";
import { BatchTrace, MAX_BATCH_LINKS } from "../../shared/pipeline/batch-trace.js";
import { TelemetryAttributes as A, SpanNames } from "../../shared/telemetry/attributes.js";
import { traceFields } from "../../shared/telemetry/log.js";
import {
  extractFromNatsHeaders,
  extractSpanContext,
  injectActiveIntoNatsHeaders,
  natsHeadersGetter,
  natsHeadersSetter,
  producerLinks,
  recordHeadersGetter,
  recordHeadersSetter,
  traceHeadersOf,
} from "../../shared/telemetry/propagation.js";
import {
  registerTracing,
  samplerFromEnv,
  type TracingHandle,
  tracingEnabled,
} from "../../shared/telemetry/telemetry.js";
import { getTracer } from "../../shared/telemetry/tracing.js";

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$/;

let handle: TracingHandle | null = null;
afterEach(async () => {
  await handle?.shutdown();
  handle = null;
});

function register(sampler = new AlwaysOnSampler()): InMemorySpanExporter {
  const exporter = new InMemorySpanExporter();
  handle = registerTracing({
    resource: resourceFromAttributes({ "service.name": "unit" }),
    sampler,
    spanProcessors: [new SimpleSpanProcessor(exporter)],
  });
  return exporter;
}

const msg = (seq: number, headers: Record<string, string>): SourceMessage => ({
  seq,
  deliverySeq: seq,
  subject: "sluice.in.p.0",
  data: new Uint8Array(),
  headers,
  token: null,
});

describe("header carriers", () => {
  it("record headers: set, and get exact or case-insensitively", () => {
    const c: Record<string, string> = {};
    recordHeadersSetter.set(c, "traceparent", "x");
    expect(c).toEqual({ traceparent: "x" });
    expect(recordHeadersGetter.get({ Traceparent: "y" }, "traceparent")).toBe("y");
    expect(recordHeadersGetter.get({ traceparent: "z", Traceparent: "y" }, "traceparent")).toBe("z");
    expect(recordHeadersGetter.get({}, "traceparent")).toBeUndefined();
    expect(recordHeadersGetter.keys({ a: "1", b: "2" })).toEqual(["a", "b"]);
  });

  it("NATS headers: set, get, keys", () => {
    const h = natsHeaders();
    natsHeadersSetter.set(h, "traceparent", "x");
    expect(h.get("traceparent")).toBe("x");
    expect(natsHeadersGetter.get(h, "traceparent")).toBe("x");
    expect(natsHeadersGetter.get(h, "TRACEPARENT")).toBe("x");
    expect(natsHeadersGetter.get(h, "tracestate")).toBeUndefined();
    expect(natsHeadersGetter.keys(h)).toContain("traceparent");
  });
});

describe("without a tracer provider", () => {
  it("spans are no-ops: nothing is injected, nothing logged", () => {
    const span = getTracer().startSpan("x");
    expect(span.isRecording()).toBe(false);
    expect(traceHeadersOf(span)).toBeNull();
    const h = natsHeaders();
    expect(injectActiveIntoNatsHeaders(h, trace.setSpan(ROOT_CONTEXT, span))).toBe(false);
    expect(h.keys()).toEqual([]);
    expect(traceFields()).toEqual({});
  });

  it("gives pino a fresh mixin object per line, so no line's fields leak into the next", () => {
    const lines: Array<Record<string, unknown>> = [];
    const log = pino(
      { mixin: traceFields, base: null, timestamp: false },
      { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) },
    );
    log.info({ shard: "demo.1", reason: "x" }, "first");
    log.info("second");
    expect(lines[1]).toEqual({ level: 30, msg: "second" });
  });
});

describe("with a tracer provider", () => {
  it("injects the span's W3C context and extracts it back as a remote parent", () => {
    register();
    const span = getTracer().startSpan("send", { kind: SpanKind.PRODUCER });
    const headers = traceHeadersOf(span);
    expect(headers).not.toBeNull();
    const m = TRACEPARENT.exec(headers!.traceparent ?? "");
    expect(m?.[1]).toBe(span.spanContext().traceId);
    expect(m?.[2]).toBe(span.spanContext().spanId);
    const sc = extractSpanContext({ "Nats-Msg-Id": "r1", ...headers! });
    expect(sc).toMatchObject({
      traceId: span.spanContext().traceId,
      spanId: span.spanContext().spanId,
      isRemote: true,
    });
    span.end();
  });

  it("does not inject for an unsampled span", () => {
    register(new AlwaysOffSampler());
    const span = getTracer().startSpan("send");
    expect(traceHeadersOf(span)).toBeNull();
  });

  it("ignores missing and malformed traceparents", () => {
    register();
    expect(extractSpanContext({})).toBeUndefined();
    expect(extractSpanContext({ traceparent: "garbage" })).toBeUndefined();
    expect(extractSpanContext({ traceparent: `00-${"0".repeat(32)}-${"1".repeat(16)}-01` })).toBeUndefined();
  });

  it("caps producer links and counts the rest", () => {
    register();
    const spans = Array.from({ length: 5 }, () => getTracer().startSpan("send"));
    const msgs = [
      ...spans.map((s, i) => msg(i + 1, traceHeadersOf(s)!)),
      msg(6, {}), // an untraced record: no link
    ];
    const { links, dropped } = producerLinks(msgs, 3);
    expect(links.map((l) => l.context.spanId)).toEqual(spans.slice(0, 3).map((s) => s.spanContext().spanId));
    expect(dropped).toBe(2);
  });

  it("NATS request headers carry the active span to a server-side child", () => {
    register();
    const span = getTracer().startSpan("sink.commit");
    const h = natsHeaders();
    expect(injectActiveIntoNatsHeaders(h, trace.setSpan(ROOT_CONTEXT, span))).toBe(true);
    const parent = trace.getSpanContext(extractFromNatsHeaders(h));
    expect(parent?.spanId).toBe(span.spanContext().spanId);
    expect(trace.getSpanContext(extractFromNatsHeaders(undefined))).toBeUndefined();
  });

  it("the log mixin reports the active span's ids", () => {
    register();
    const span = getTracer().startSpan("x");
    const fields = context.with(trace.setSpan(ROOT_CONTEXT, span), () => traceFields());
    expect(fields).toMatchObject({
      trace_id: span.spanContext().traceId,
      span_id: span.spanContext().spanId,
    });
    expect(traceFields()).toEqual({});
  });

  it("a batch span is a new trace linked to its records' publish spans; commit and settle are its children", async () => {
    const exporter = register();
    const publishes = Array.from({ length: MAX_BATCH_LINKS + 2 }, () => getTracer().startSpan("send"));
    const batch = publishes.map((s, i) => msg(i + 1, traceHeadersOf(s)!));
    const bt = new BatchTrace({ pipeline: "p", shard: 3 }, 7, "w1", batch);
    const res = await bt.commit(async () => {
      // The commit span is active while the sink request is made.
      expect(trace.getActiveSpan()).toBeDefined();
      return { committed: batch.length, skipped: 0, checkpoint: { seq: batch.length, epoch: 7 } };
    });
    expect(res.committed).toBe(batch.length);
    let acked = false;
    bt.settle("p", () => {
      acked = true;
    });
    expect(acked).toBe(true);
    bt.end();
    const spans = exporter.getFinishedSpans();
    const proc = spans.find((s) => s.name.startsWith(`${SpanNames.processPrefix} `))!;
    const commit = spans.find((s) => s.name === SpanNames.sinkCommit)!;
    const settle = spans.find((s) => s.name.startsWith(`${SpanNames.settlePrefix} `))!;
    expect(proc.kind).toBe(SpanKind.CONSUMER);
    expect(proc.parentSpanContext).toBeUndefined();
    expect(proc.attributes).toMatchObject({
      [A.messagingSystem]: "nats",
      [A.messagingOperationType]: "process",
      [A.messagingBatchMessageCount]: batch.length,
      [A.pipeline]: "p",
      [A.shard]: 3,
      [A.epoch]: 7,
      [A.worker]: "w1",
      [A.droppedLinks]: 2,
    });
    expect(proc.links).toHaveLength(MAX_BATCH_LINKS);
    expect(proc.links[0]?.context.spanId).toBe(publishes[0]!.spanContext().spanId);
    expect(proc.links[0]?.context.traceId).toBe(publishes[0]!.spanContext().traceId);
    for (const child of [commit, settle]) {
      expect(child.spanContext().traceId).toBe(proc.spanContext().traceId);
      expect(child.parentSpanContext?.spanId).toBe(proc.spanContext().spanId);
    }
    expect(commit.attributes[A.committed]).toBe(batch.length);
    expect(settle.attributes[A.messagingOperationType]).toBe("settle");
  });
});

describe("configuration from the environment", () => {
  it("traces only with an OTLP endpoint and the SDK not disabled", () => {
    expect(tracingEnabled({})).toBe(false);
    expect(tracingEnabled({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318" })).toBe(true);
    expect(tracingEnabled({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://127.0.0.1:4318/v1/traces" })).toBe(
      true,
    );
    expect(
      tracingEnabled({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318", OTEL_SDK_DISABLED: "true" }),
    ).toBe(false);
    expect(
      tracingEnabled({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318", OTEL_TRACES_EXPORTER: "none" }),
    ).toBe(false);
  });

  it("builds the sampler OTEL_TRACES_SAMPLER names", () => {
    expect(samplerFromEnv({})).toBeInstanceOf(ParentBasedSampler);
    expect(samplerFromEnv({ OTEL_TRACES_SAMPLER: "always_on" })).toBeInstanceOf(AlwaysOnSampler);
    expect(samplerFromEnv({ OTEL_TRACES_SAMPLER: "always_off" })).toBeInstanceOf(AlwaysOffSampler);
    const ratio = samplerFromEnv({ OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.01" });
    expect(ratio).toBeInstanceOf(TraceIdRatioBasedSampler);
    expect(ratio.toString()).toContain("0.01");
    expect(samplerFromEnv({ OTEL_TRACES_SAMPLER: "parentbased_traceidratio" })).toBeInstanceOf(
      ParentBasedSampler,
    );
  });
});
