/**
 * The tracer the runtimes and adapters use, and small helpers around spans. Only the
 * OpenTelemetry API is imported: until `startTelemetry` registers a provider (it does so only
 * when an OTLP endpoint is configured) every span is the API's non-recording no-op, so tracing
 * costs a few object allocations per batch and nothing per record. The simulation never
 * registers one, and no helper reads a clock or a timer of its own.
 */
import {
  type Attributes,
  type Context,
  context,
  type Span,
  type SpanKind,
  SpanStatusCode,
  type Tracer,
  type TracerProvider,
  trace,
} from "@opentelemetry/api";
import { INSTRUMENTATION_SCOPE } from "./attributes.js";

let cached: { provider: TracerProvider; tracer: Tracer } | null = null;

/**
 * The `sluice` tracer of the registered provider. Cached per global provider: the API's proxy
 * tracer binds itself to the first provider it sees, and a process that registers a provider,
 * shuts it down and registers another (benchmarks, tests) must follow the new one.
 */
export function getTracer(): Tracer {
  const provider = trace.getTracerProvider();
  if (cached?.provider !== provider) cached = { provider, tracer: provider.getTracer(INSTRUMENTATION_SCOPE) };
  return cached.tracer;
}

/** Marks `span` failed with `err` (a message only: no stack traces in spans). */
export function recordFailure(span: Span, err: unknown): void {
  if (!span.isRecording()) return;
  const message = err instanceof Error ? err.message : String(err);
  span.setStatus({ code: SpanStatusCode.ERROR, message });
  span.addEvent("exception", {
    "exception.type": err instanceof Error ? err.name : typeof err,
    "exception.message": message,
  });
}

/**
 * Runs `fn` inside a new span (active for `fn`, so log lines and requests made inside carry
 * it), ends the span when `fn` settles and marks it failed if `fn` throws.
 */
export async function withSpan<T>(
  name: string,
  opts: { kind?: SpanKind; attributes?: Attributes; parent?: Context },
  fn: (span: Span) => Promise<T>,
): Promise<T> {
  const parent = opts.parent ?? context.active();
  const span = getTracer().startSpan(
    name,
    {
      ...(opts.kind === undefined ? {} : { kind: opts.kind }),
      ...(opts.attributes ? { attributes: opts.attributes } : {}),
    },
    parent,
  );
  try {
    return await context.with(trace.setSpan(parent, span), () => fn(span));
  } catch (err) {
    recordFailure(span, err);
    throw err;
  } finally {
    span.end();
  }
}

/** Runs `fn` with `span` active (synchronously). */
export function inSpan<T>(span: Span, fn: () => T): T {
  return context.with(trace.setSpan(context.active(), span), fn);
}
