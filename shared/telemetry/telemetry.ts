/**
 * OpenTelemetry for a sluice process: traces over OTLP/HTTP (JSON) when an endpoint is
 * configured, metrics served by Prometheus' text format on the node's own HTTP endpoint.
 *
 * Tracing is registered only when `OTEL_EXPORTER_OTLP_ENDPOINT` or
 * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and neither `OTEL_SDK_DISABLED=true` nor
 * `OTEL_TRACES_EXPORTER=none`): otherwise nothing is registered and every span in the code is
 * the API's no-op. The sampler follows `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`
 * (default `parentbased_always_on`); the batch processor follows `OTEL_BSP_*`; the exporter
 * reads its endpoint, headers and timeout from the standard `OTEL_EXPORTER_OTLP_*` variables.
 *
 * Metrics do not depend on any of that: /metrics is part of a node's HTTP endpoint.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { context, createNoopMeter, diag, type Meter, metrics, propagation, trace } from "@opentelemetry/api";
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from "@opentelemetry/core";
import { PrometheusExporter } from "@opentelemetry/exporter-prometheus";
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http";
import {
  defaultResource,
  detectResources,
  envDetector,
  type Resource,
  resourceFromAttributes,
} from "@opentelemetry/resources";
import { MeterProvider } from "@opentelemetry/sdk-metrics";
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BasicTracerProvider,
  BatchSpanProcessor,
  ParentBasedSampler,
  type Sampler,
  type SpanProcessor,
  TraceIdRatioBasedSampler,
} from "@opentelemetry/sdk-trace-base";
import { AsyncLocalStorageContextManager } from "./async-context-manager.js";
import { INSTRUMENTATION_SCOPE, ResourceAttributes, TelemetryAttributes } from "./attributes.js";

/** Longest wait for the last spans to be exported when a process stops, ms. */
const SHUTDOWN_TIMEOUT_MS = 3_000;

/** What `startTelemetry` needs of a node's HTTP server (nodes/node-http.ts' NodeHttpServer). */
export interface RouteRegistrar {
  route(path: string, handler: (req: IncomingMessage, res: ServerResponse) => void | Promise<void>): unknown;
}

export interface TelemetryOptions {
  /** `service.name`: sluice-worker, sluice-coordinator, sluice-sink, sluice-load. */
  serviceName: string;
  /** `service.instance.id` and `sluice.node.id`. */
  nodeId: string;
  /** Where to serve `/metrics`; without it metrics go nowhere (a no-op meter). */
  http?: RouteRegistrar;
  /** Defaults to process.env. */
  env?: NodeJS.ProcessEnv;
}

export interface TelemetryHandle {
  /** Meter of the `sluice` scope; a no-op meter when there is no HTTP server to serve it. */
  readonly meter: Meter;
  /** True when spans are recorded and exported. */
  readonly tracing: boolean;
  /** Exports buffered spans now. */
  forceFlush(): Promise<void>;
  /** Flushes and stops both signals, and unregisters the globals. Idempotent. */
  shutdown(): Promise<void>;
}

/** Whether the environment asks for traces to be exported. */
export function tracingEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === "true") return false;
  if (env.OTEL_TRACES_EXPORTER?.trim().toLowerCase() === "none") return false;
  return !!(env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim() || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim());
}

/** The sampler `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` name (spec defaults). */
export function samplerFromEnv(env: NodeJS.ProcessEnv = process.env): Sampler {
  const name = env.OTEL_TRACES_SAMPLER?.trim().toLowerCase() || "parentbased_always_on";
  const ratio = (): number => {
    const raw = env.OTEL_TRACES_SAMPLER_ARG?.trim();
    const r = raw ? Number(raw) : Number.NaN;
    if (Number.isFinite(r) && r >= 0 && r <= 1) return r;
    if (raw) diag.warn(`OTEL_TRACES_SAMPLER_ARG=${raw} is not a ratio in [0, 1]; using 1`);
    return 1;
  };
  switch (name) {
    case "always_on":
      return new AlwaysOnSampler();
    case "always_off":
      return new AlwaysOffSampler();
    case "traceidratio":
      return new TraceIdRatioBasedSampler(ratio());
    case "parentbased_always_on":
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
    case "parentbased_always_off":
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case "parentbased_traceidratio":
      return new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(ratio()) });
    default:
      diag.warn(`OTEL_TRACES_SAMPLER=${name} is not supported; using parentbased_always_on`);
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
  }
}

export function sluiceResource(serviceName: string, nodeId: string, env?: NodeJS.ProcessEnv): Resource {
  // Precedence: SDK defaults < OTEL_RESOURCE_ATTRIBUTES / OTEL_SERVICE_NAME < the node's own
  // identity (every node of a cluster shares one environment, so the env must not name them).
  const fromEnv =
    env === undefined || env === process.env ? detectResources({ detectors: [envDetector] }) : undefined;
  let r = defaultResource();
  if (fromEnv) r = r.merge(fromEnv);
  return r.merge(
    resourceFromAttributes({
      [ResourceAttributes.serviceName]: serviceName,
      [ResourceAttributes.serviceNamespace]: "sluice",
      [ResourceAttributes.serviceInstanceId]: nodeId,
      [TelemetryAttributes.nodeId]: nodeId,
    }),
  );
}

export interface TracingHandle {
  provider: BasicTracerProvider;
  forceFlush(): Promise<void>;
  shutdown(): Promise<void>;
}

/**
 * Registers a tracer provider globally with the W3C propagators and an AsyncLocalStorage
 * context manager. Used by `startTelemetry` (OTLP exporter) and by benchmarks and tests that
 * bring their own processor. Fails if a provider is already registered.
 */
export function registerTracing(o: {
  resource: Resource;
  sampler: Sampler;
  spanProcessors: SpanProcessor[];
}): TracingHandle {
  const provider = new BasicTracerProvider({
    resource: o.resource,
    sampler: o.sampler,
    spanProcessors: o.spanProcessors,
  });
  const contextManager = new AsyncLocalStorageContextManager();
  if (!trace.setGlobalTracerProvider(provider)) {
    throw new Error("a global tracer provider is already registered");
  }
  context.setGlobalContextManager(contextManager);
  propagation.setGlobalPropagator(
    new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }),
  );
  let stopped: Promise<void> | null = null;
  return {
    provider,
    forceFlush: () => provider.forceFlush(),
    shutdown() {
      stopped ??= (async () => {
        try {
          await provider.shutdown();
        } finally {
          trace.disable();
          propagation.disable();
          context.disable();
        }
      })();
      return stopped;
    },
  };
}

export function startTelemetry(o: TelemetryOptions): TelemetryHandle {
  const env = o.env ?? process.env;
  const resource = sluiceResource(o.serviceName, o.nodeId, env);

  let tracing: TracingHandle | null = null;
  if (tracingEnabled(env)) {
    // The exporter reads OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT itself and appends /v1/traces
    // to the generic one; it posts JSON (application/json).
    const exporter = new OTLPTraceExporter();
    tracing = registerTracing({
      resource,
      sampler: samplerFromEnv(env),
      spanProcessors: [new BatchSpanProcessor(exporter)],
    });
  }

  let meterProvider: MeterProvider | null = null;
  let meter: Meter = createNoopMeter();
  if (o.http) {
    // No server of its own: the exporter's handler answers /metrics on the node's endpoint.
    const exporter = new PrometheusExporter({ preventServerStart: true, withoutScopeInfo: true });
    meterProvider = new MeterProvider({ resource, readers: [exporter] });
    meter = meterProvider.getMeter(INSTRUMENTATION_SCOPE);
    metrics.setGlobalMeterProvider(meterProvider);
    o.http.route("/metrics", (req, res) => exporter.getMetricsRequestHandler(req, res));
  }

  let stopped: Promise<void> | null = null;
  return {
    meter,
    tracing: tracing !== null,
    forceFlush: async () => {
      await Promise.all([tracing?.forceFlush(), meterProvider?.forceFlush()]);
    },
    shutdown() {
      stopped ??= (async () => {
        // Bounded: an unreachable collector must not hold a node's exit past its grace period
        // (the exporter's own timeout is 10 s); spans not sent by then are lost.
        let timer: ReturnType<typeof setTimeout> | undefined;
        const limit = new Promise<void>((resolve) => {
          timer = setTimeout(resolve, SHUTDOWN_TIMEOUT_MS);
          timer.unref?.();
        });
        await Promise.race([Promise.allSettled([tracing?.shutdown(), meterProvider?.shutdown()]), limit]);
        clearTimeout(timer);
        if (meterProvider) metrics.disable();
      })();
      return stopped;
    },
  };
}
