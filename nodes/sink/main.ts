/** The sink process: owns the SQLite file and serves fenced commits to the workers. */

import { connectNats, drainWithin } from "../../shared/adapters/nats/connection.js";
import { NatsSinkServer } from "../../shared/adapters/sink/nats-sink.js";
import { SqliteSinkInspector } from "../../shared/adapters/sink/sqlite-inspector.js";
import { SqliteSink } from "../../shared/adapters/sink/sqlite-sink.js";
import { sinkOf } from "../../shared/contract/config.js";
import { createLogger } from "../../shared/telemetry/log.js";
import { instrumentSink } from "../../shared/telemetry/metrics.js";
import { startTelemetry } from "../../shared/telemetry/telemetry.js";
import { NodeHttpServer } from "../node-http.js";
import { onShutdown, parseNodeOptions } from "../node-options.js";

const opts = parseNodeOptions("sink", process.argv);
const log = createLogger(opts.id, "sink");
const http = new NodeHttpServer();
// /metrics on the node's endpoint; traces only when OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set.
const telemetry = startTelemetry({ serviceName: "sluice-sink", nodeId: opts.id, http });
// The pipelines that commit to SQLite (others go to PostgreSQL or an output stream directly).
const pipelines = opts.config.pipelines.filter((p) => sinkOf(opts.config, p).type === "sqlite");
const sink = new SqliteSink(opts.sink, {
  pipelines: pipelines.map((p) => ({ name: p.name, mode: p.tableMode })),
});
const nc = await connectNats({
  servers: opts.servers,
  name: `sluice-sink-${opts.id}`,
  auth: opts.auth,
  tls: opts.tls,
});
const inspector = new SqliteSinkInspector(opts.sink);
const server = new NatsSinkServer(nc, instrumentSink(sink, telemetry.meter), inspector, (err) =>
  log.error({ err }, "sink request failed"),
);
server.start();
if (opts.httpPort > 0) await http.start(opts.httpPort, opts.httpBind);
log.info({ sink: opts.sink }, "sink started");

onShutdown(async () => {
  await http.stop();
  await server.stop();
  await drainWithin(nc);
  await inspector.close();
  await sink.close();
  await telemetry.shutdown();
  log.info({}, "stopped");
});
