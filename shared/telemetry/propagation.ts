/**
 * W3C trace context in NATS message headers, through the OpenTelemetry propagation API (the
 * global propagator is the W3C one once tracing is started; before that, inject and extract
 * do nothing).
 *
 * Carriers: a plain `Record<string, string>` (a `SourceMessage`'s headers, or the headers a
 * producer keeps per record) and NATS `MsgHdrs`. NATS header names are case-sensitive on the
 * wire but other clients may write `Traceparent`, so the getters fall back to a
 * case-insensitive match.
 */

import type { MsgHdrs } from "@nats-io/transport-node";
import {
  type Context,
  context,
  isSpanContextValid,
  type Link,
  propagation,
  ROOT_CONTEXT,
  type Span,
  type SpanContext,
  type TextMapGetter,
  type TextMapSetter,
  trace,
} from "@opentelemetry/api";
import { TraceHeaders } from "./attributes.js";

export const recordHeadersSetter: TextMapSetter<Record<string, string>> = {
  set(carrier, key, value) {
    carrier[key] = value;
  },
};

export const recordHeadersGetter: TextMapGetter<Record<string, string>> = {
  keys(carrier) {
    return Object.keys(carrier);
  },
  get(carrier, key) {
    const exact = carrier[key];
    if (exact !== undefined) return exact;
    const lower = key.toLowerCase();
    for (const k of Object.keys(carrier)) if (k.toLowerCase() === lower) return carrier[k];
    return undefined;
  },
};

export const natsHeadersSetter: TextMapSetter<MsgHdrs> = {
  set(carrier, key, value) {
    carrier.set(key, value);
  },
};

export const natsHeadersGetter: TextMapGetter<MsgHdrs> = {
  keys(carrier) {
    return carrier.keys();
  },
  get(carrier, key) {
    if (carrier.has(key)) return carrier.get(key);
    const lower = key.toLowerCase();
    for (const k of carrier.keys()) if (k.toLowerCase() === lower) return carrier.get(k);
    return undefined;
  },
};

/**
 * The trace headers of `span` (traceparent, tracestate), or null when the span is not
 * recording: an unsampled publish then costs no header bytes and no formatting.
 */
export function traceHeadersOf(span: Span, base: Context = context.active()): Record<string, string> | null {
  if (!span.isRecording()) return null;
  const carrier: Record<string, string> = {};
  propagation.inject(trace.setSpan(base, span), carrier, recordHeadersSetter);
  return Object.keys(carrier).length > 0 ? carrier : null;
}

/** The remote span context in `headers`, or undefined when there is none (or it is invalid). */
export function extractSpanContext(headers: Record<string, string>): SpanContext | undefined {
  // Cheap pre-check: most records of an untraced producer carry no traceparent at all.
  if (recordHeadersGetter.get(headers, TraceHeaders.traceparent) === undefined) return undefined;
  const sc = trace.getSpanContext(propagation.extract(ROOT_CONTEXT, headers, recordHeadersGetter));
  return sc && isSpanContextValid(sc) ? sc : undefined;
}

/**
 * Links to the producer spans of `messages`, at most `max` (a batch of thousands of records
 * would otherwise carry thousands of links); `dropped` counts those left out.
 */
export function producerLinks(
  messages: ReadonlyArray<{ headers: Record<string, string> }>,
  max: number,
): { links: Link[]; dropped: number } {
  const links: Link[] = [];
  let dropped = 0;
  for (const m of messages) {
    const sc = extractSpanContext(m.headers);
    if (!sc) continue;
    if (links.length < max) links.push({ context: sc });
    else dropped++;
  }
  return { links, dropped };
}

/** Injects the active context (if its span is recording) into NATS headers; returns whether it did. */
export function injectActiveIntoNatsHeaders(h: MsgHdrs, ctx: Context = context.active()): boolean {
  const span = trace.getSpan(ctx);
  if (!span?.isRecording()) return false;
  propagation.inject(ctx, h, natsHeadersSetter);
  return true;
}

/** The context carried by NATS headers (ROOT when none). */
export function extractFromNatsHeaders(h: MsgHdrs | undefined): Context {
  if (!h) return ROOT_CONTEXT;
  return propagation.extract(ROOT_CONTEXT, h, natsHeadersGetter);
}
