/**
 * Telemetry end to end on a real cluster: an OTLP/HTTP receiver started here gets the spans of
 * the producer (this process) and of every node process, and one trace joins a record's publish
 * to its sink commit; `/metrics` on a worker, a coordinator and the sink serves the metrics.
 */
import { afterEach, describe, expect, it } from "vitest";
import { addWorker } from "../../nodes/cli/local-cluster.js";
import { waitUntil } from "../../nodes/cli/wait.js";
import { NodeHttpServer } from "../../nodes/node-http.js";
import { encodeRecord } from "../../shared/contract/codec.js";
import { Producer, type PublishResult } from "../../shared/producer/producer.js";
import { TelemetryAttributes as A, MetricNames, SpanNames } from "../../shared/telemetry/attributes.js";
import { startTelemetry, type TelemetryHandle } from "../../shared/telemetry/telemetry.js";
import { startTestCluster, type TestCluster, waitSettled } from "./harness.js";

/** OTLP/JSON as the exporter sends it: hex ids, numeric kinds, typed attribute values. */
interface OtlpValue {
  stringValue?: string;
  intValue?: number | string;
  boolValue?: boolean;
  doubleValue?: number;
}
interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes?: Array<{ key: string; value: OtlpValue }>;
  links?: Array<{ traceId: string; spanId: string }>;
}
interface ReceivedSpan extends OtlpSpan {
  service: string;
  attrs: Record<string, string | number | boolean>;
}

const SPAN_KIND = { server: 2, client: 3, producer: 4, consumer: 5 } as const;

function attrValue(v: OtlpValue): string | number | boolean {
  if (v.stringValue !== undefined) return v.stringValue;
  if (v.intValue !== undefined) return Number(v.intValue);
  if (v.doubleValue !== undefined) return v.doubleValue;
  return v.boolValue ?? "";
}

/** A minimal OTLP/HTTP trace receiver: POST /v1/traces with a JSON body. */
class OtlpReceiver {
  readonly spans: ReceivedSpan[] = [];
  readonly contentTypes = new Set<string>();
  private readonly http = new NodeHttpServer();
  url = "";

  async start(): Promise<void> {
    this.http.route("/v1/traces", (req, res) => {
      if (req.method !== "POST") {
        res.writeHead(405).end();
        return;
      }
      this.contentTypes.add(String(req.headers["content-type"]));
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        try {
          this.ingest(JSON.parse(Buffer.concat(chunks).toString("utf8")));
          res.writeHead(200, { "content-type": "application/json" }).end("{}");
        } catch {
          res.writeHead(400).end();
        }
      });
    });
    this.url = `http://127.0.0.1:${await this.http.start(0)}`;
  }

  private ingest(body: {
    resourceSpans?: Array<{
      resource?: { attributes?: Array<{ key: string; value: OtlpValue }> };
      scopeSpans?: Array<{ spans?: OtlpSpan[] }>;
    }>;
  }): void {
    for (const rs of body.resourceSpans ?? []) {
      const service = String(
        attrValue(rs.resource?.attributes?.find((a) => a.key === "service.name")?.value ?? {}),
      );
      for (const ss of rs.scopeSpans ?? []) {
        for (const s of ss.spans ?? []) {
          const attrs: ReceivedSpan["attrs"] = {};
          for (const a of s.attributes ?? []) attrs[a.key] = attrValue(a.value);
          this.spans.push({ ...s, service, attrs });
        }
      }
    }
  }

  stop(): Promise<void> {
    return this.http.stop();
  }
}

/** Sets env variables; returns a function restoring the previous values. */
function setEnv(vars: Record<string, string>): () => void {
  const before = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  return () => {
    for (const [k, v] of Object.entries(before)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  };
}

/** Prometheus text: the value of every sample whose name and labels match. */
function samples(text: string, name: string, labels: Record<string, string> = {}): number[] {
  const out: number[] = [];
  for (const line of text.split("\n")) {
    if (line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const ls = m[2] ?? "";
    if (Object.entries(labels).every(([k, v]) => ls.includes(`${k}="${v}"`))) out.push(Number(m[3]));
  }
  return out;
}
const sum = (xs: number[]): number => xs.reduce((a, b) => a + b, 0);

async function scrape(url: string): Promise<string> {
  const r = await fetch(`${url}/metrics`);
  expect(r.status).toBe(200);
  return r.text();
}

describe("telemetry (real 3-node NATS cluster, OTLP receiver in the test)", () => {
  let tc: TestCluster | undefined;
  let receiver: OtlpReceiver | undefined;
  let telemetry: TelemetryHandle | undefined;
  let restoreEnv: (() => void) | undefined;
  afterEach(async () => {
    restoreEnv?.();
    await telemetry?.shutdown();
    await tc?.stop();
    await receiver?.stop();
    tc = undefined;
    receiver = undefined;
    telemetry = undefined;
    restoreEnv = undefined;
  });

  it("one trace joins a publish to its sink commit; /metrics serves every node's metrics", async () => {
    receiver = await (async () => {
      const r = new OtlpReceiver();
      await r.start();
      return r;
    })();
    const rx = receiver;
    // The node processes inherit this environment when the cluster starts; so does this
    // process' exporter, created while it is set.
    restoreEnv = setEnv({
      OTEL_EXPORTER_OTLP_ENDPOINT: rx.url,
      OTEL_TRACES_SAMPLER: "always_on",
      OTEL_BSP_SCHEDULE_DELAY: "200",
    });
    tc = await startTestCluster({ workers: 2, coordinators: 1 });
    telemetry = startTelemetry({ serviceName: "sluice-test-producer", nodeId: "test" });
    restoreEnv();
    restoreEnv = undefined;
    expect(telemetry.tracing).toBe(true);
    await waitSettled(tc, 30_000, ["w1", "w2"]);

    // Publish through the producer library: a PRODUCER span and a traceparent per record.
    const count = 300;
    const runId = `otel-${Date.now().toString(36)}`;
    const producer = new Producer(tc.nc, "demo");
    const results: PublishResult[] = [];
    for (let i = 0; i < count; i++) {
      const id = `${runId}-${i}`;
      await producer.send(
        { id, key: `k${i % 50}`, data: encodeRecord({ id, n: i }) },
        (r) => void results.push(r),
      );
    }
    await producer.close();
    expect(results.filter((r) => r.status === "acked")).toHaveLength(count);
    await tc.waitCommitted(count);
    await telemetry.forceFlush();

    // --- traces ---
    const chain = await waitUntil(
      "a publish span linked from a process span with a sink.commit child",
      30_000,
      () => {
        const byId = new Map(rx.spans.map((s) => [s.spanId, s]));
        for (const proc of rx.spans) {
          if (proc.attrs[A.messagingOperationType] !== "process") continue;
          const commit = rx.spans.find(
            (s) => s.name === SpanNames.sinkCommit && s.parentSpanId === proc.spanId,
          );
          if (!commit) continue;
          for (const link of proc.links ?? []) {
            const publish = byId.get(link.spanId);
            if (publish && publish.traceId === link.traceId) {
              // The sink process continues the commit's trace in its own SERVER span.
              const serve = rx.spans.find(
                (s) => s.parentSpanId === commit.spanId && s.name === `${SpanNames.sinkServePrefix} commit`,
              );
              if (serve) return { publish, proc, commit, serve };
            }
          }
        }
        return undefined;
      },
      200,
    );
    const { publish, proc, commit, serve } = chain;
    expect([...rx.contentTypes]).toContain("application/json");
    expect(publish).toMatchObject({ service: "sluice-test-producer", kind: SPAN_KIND.producer });
    expect(publish.name).toBe("send ingest.demo.*");
    expect(publish.attrs).toMatchObject({
      [A.messagingSystem]: "nats",
      [A.messagingOperationType]: "send",
      [A.publishStatus]: "acked",
      [A.pipeline]: "demo",
    });
    expect(String(publish.attrs[A.messagingMessageId])).toMatch(new RegExp(`^${runId}-`));
    expect(String(publish.attrs[A.messagingDestinationName])).toMatch(/^ingest\.demo\.k\d+$/);

    expect(proc.service).toBe("sluice-worker");
    expect(proc.kind).toBe(SPAN_KIND.consumer);
    expect(proc.attrs).toMatchObject({ [A.messagingSystem]: "nats", [A.pipeline]: "demo" });
    expect(proc.attrs[A.messagingBatchMessageCount]).toBeGreaterThan(0);
    expect(typeof proc.attrs[A.shard]).toBe("number");
    expect(proc.attrs[A.epoch]).toBeGreaterThan(0);
    expect(["w1", "w2"]).toContain(proc.attrs[A.worker]);

    expect(commit).toMatchObject({ traceId: proc.traceId, kind: SPAN_KIND.client, service: "sluice-worker" });
    expect(serve).toMatchObject({ traceId: proc.traceId, kind: SPAN_KIND.server, service: "sluice-sink" });
    expect(
      rx.spans.some((s) => s.parentSpanId === proc.spanId && s.attrs[A.messagingOperationType] === "settle"),
    ).toBe(true);
    // Every traced record is accounted for in some batch span: linked, or counted as dropped.
    const publishIds = new Set(rx.spans.filter((s) => s.name === publish.name).map((s) => s.spanId));
    expect(publishIds.size).toBe(count);
    await waitUntil(
      "every publish span linked from a batch span (or counted as dropped)",
      15_000,
      () => {
        const linked = new Set<string>();
        let dropped = 0;
        for (const s of rx.spans) {
          if (s.attrs[A.messagingOperationType] !== "process") continue;
          for (const l of s.links ?? []) if (publishIds.has(l.spanId)) linked.add(l.spanId);
          dropped += Number(s.attrs[A.droppedLinks] ?? 0);
        }
        return linked.size + dropped >= count ? true : undefined;
      },
      200,
    );
    // Lease acquisitions and the initial assignment writes are traced too.
    expect(rx.spans.some((s) => s.name === SpanNames.leaseAcquire && s.service === "sluice-worker")).toBe(
      true,
    );
    const write = rx.spans.find(
      (s) => s.name === SpanNames.assignmentWrite && s.attrs[A.handoffReason] === "initial",
    );
    expect(write?.service).toBe("sluice-coordinator");
    // Logs join traces: the coordinator's "assign" line carries the write span's ids.
    expect(tc.logOf("c1")).toContain(`"trace_id":"${write!.traceId}","span_id":"${write!.spanId}"`);

    // --- metrics ---
    const f = tc.file();
    const workerUrls = f.workers.map((w) => w.http!);
    const coordinatorUrl = f.coordinators[0]!.http!;
    const sinkUrl = f.sinks[0]!.http!;
    // Exactly once, seen from the workers' counters too (a counter is bumped just after its commit).
    const committed = await waitUntil(
      `${count} records committed in the workers' counters`,
      15_000,
      async () => {
        const texts = await Promise.all(workerUrls.map(scrape));
        const n = sum(texts.flatMap((t) => samples(t, MetricNames.recordsCommitted, { pipeline: "demo" })));
        return n >= count ? { n, texts } : undefined;
      },
      200,
    );
    expect(committed.n).toBe(count);
    const worker = committed.texts.find((t) => sum(samples(t, MetricNames.recordsCommitted)) > 0)!;
    for (const name of [
      MetricNames.recordsIn,
      MetricNames.recordsCommitted,
      `${MetricNames.commitDuration}_bucket`,
      `${MetricNames.commitDuration}_count`,
      `${MetricNames.batchSize}_bucket`,
      MetricNames.shardLag,
      MetricNames.shardCommittedSeq,
      MetricNames.shardEpoch,
    ]) {
      expect(samples(worker, name).length, name).toBeGreaterThan(0);
    }
    expect(worker).toMatch(/^# TYPE sluice_records_dead_lettered_total counter$/m);
    expect(sum(samples(worker, MetricNames.recordsIn, { pipeline: "demo" }))).toBeGreaterThan(0);
    expect(worker).toMatch(/sluice_shard_epoch\{pipeline="demo",shard="\d+"\} [1-9]/);
    expect(sum(samples(worker, MetricNames.shardCommittedSeq))).toBeGreaterThan(0);

    const sink = await scrape(sinkUrl);
    expect(sum(samples(sink, MetricNames.sinkCommits))).toBeGreaterThan(0);
    expect(sum(samples(sink, `${MetricNames.sinkCommitDuration}_count`))).toBeGreaterThan(0);
    expect(sink).toMatch(/^# TYPE sluice_sink_fenced_total counter$/m);

    const coord = await scrape(coordinatorUrl);
    expect(sum(samples(coord, MetricNames.assignments, { reason: "initial" }))).toBeGreaterThanOrEqual(16);
    expect(samples(coord, MetricNames.members)).toEqual([2]);
    expect(samples(coord, MetricNames.isLeader)).toEqual([1]);
    expect(sum(samples(coord, MetricNames.leaderChanges))).toBeGreaterThanOrEqual(1);
    expect(sum(samples(coord, `${MetricNames.heartbeatDelay}_count`))).toBeGreaterThan(0);
    // The backlog and the worker count it asks for (the dashboard's poll feeds them).
    const scaling = await waitUntil(
      "the scaling gauges",
      10_000,
      async () => {
        const t = await scrape(coordinatorUrl);
        return samples(t, MetricNames.desiredWorkers).length > 0 ? t : undefined;
      },
      200,
    );
    expect(samples(scaling, MetricNames.pipelineBacklog, { pipeline: "demo" })).toHaveLength(1);
    expect(samples(scaling, MetricNames.desiredWorkers)).toEqual([1]);

    // --- a graceful hand-off: spans on both sides, hand-off counters and durations ---
    addWorker(tc.dir, "w3");
    await waitSettled(tc, 30_000, ["w1", "w2", "w3"]);
    const after = await waitUntil(
      "hand-off metrics on the coordinator",
      15_000,
      async () => {
        const t = await scrape(coordinatorUrl);
        return sum(samples(t, `${MetricNames.handoffDuration}_count`)) > 0 ? t : undefined;
      },
      200,
    );
    expect(sum(samples(after, MetricNames.handoffs, { reason: "released" }))).toBeGreaterThan(0);
    expect(sum(samples(after, MetricNames.assignments, { reason: "rebalance" }))).toBeGreaterThan(0);
    expect(samples(after, MetricNames.members)).toEqual([3]);
    await waitUntil(
      "hand-off and rebalance spans",
      15_000,
      () =>
        rx.spans.some((s) => s.name === SpanNames.leaseHandoff && s.attrs[A.leaseResult] === "released") &&
        rx.spans.some((s) => s.name === SpanNames.assignmentWrite && s.attrs[A.handoffReason] === "rebalance")
          ? true
          : undefined,
      200,
    );
  });
});
