/**
 * The sinks a node opens for a config: for each pipeline the one `sinkOf` names, shared by the
 * pipelines that name the same, behind one routing `Sink` (workers) or `SinkInspector` (tools).
 */
import type { NatsConnection } from "@nats-io/transport-node";
import { type SinkConfig, type SluiceConfig, sinkOf } from "../../contract/config.js";
import type { Sink, SinkInspector } from "../../contract/ports.js";
import { JetStreamOutputInspector } from "../nats/jetstream-output-inspector.js";
import { JetStreamOutputStore } from "../nats/jetstream-output-store.js";
import { NatsSinkClient } from "./nats-sink.js";
import { OutputStreamSink } from "./output-stream-sink.js";
import { PostgresSinkInspector } from "./postgres-inspector.js";
import { postgresPool } from "./postgres-pool.js";
import { PostgresSink } from "./postgres-sink.js";
import { RoutingSink, RoutingSinkInspector } from "./routing-sink.js";

/** Pipelines grouped by the sink they commit to (equal configs share one sink). */
function bySink(cfg: SluiceConfig): Array<{ sink: SinkConfig; pipelines: SluiceConfig["pipelines"] }> {
  const groups = new Map<string, { sink: SinkConfig; pipelines: SluiceConfig["pipelines"] }>();
  for (const p of cfg.pipelines) {
    const sink = sinkOf(cfg, p);
    const key = JSON.stringify(sink);
    let g = groups.get(key);
    if (!g) {
      g = { sink, pipelines: [] };
      groups.set(key, g);
    }
    g.pipelines.push(p);
  }
  return [...groups.values()];
}

/** True when some pipeline commits to SQLite, which needs the sink process. */
export const usesSqlite = (cfg: SluiceConfig): boolean => bySink(cfg).some((g) => g.sink.type === "sqlite");

/** A worker's sink: each pipeline's, over `nc` (SQLite through the sink process, output streams). */
export function openWorkerSink(cfg: SluiceConfig, nc: NatsConnection, worker: string): Sink {
  const byPipeline = new Map<string, Sink>();
  for (const g of bySink(cfg)) {
    let sink: Sink;
    switch (g.sink.type) {
      case "sqlite":
        sink = new NatsSinkClient(nc);
        break;
      case "postgres":
        sink = new PostgresSink(postgresPool(g.sink, { name: `sluice-${worker}` }), {
          pipelines: g.pipelines.map((p) => ({ name: p.name, mode: p.tableMode })),
          statementTimeoutMs: g.sink.statementTimeoutMs,
          idleInTransactionTimeoutMs: g.sink.idleInTransactionTimeoutMs,
        });
        break;
      case "jetstream":
        sink = new OutputStreamSink(new JetStreamOutputStore(nc));
        break;
    }
    for (const p of g.pipelines) byPipeline.set(p.name, sink);
  }
  return new RoutingSink(byPipeline);
}

/**
 * The read side of every pipeline's sink. `sqlite` builds SQLite's (the file itself for tools on
 * the sink's host, the sink process over NATS for a coordinator); PostgreSQL is read with a pool
 * of two connections and output streams over `nc`.
 */
export function openInspector(
  cfg: SluiceConfig,
  deps: { sqlite: () => SinkInspector; nc?: NatsConnection },
): SinkInspector {
  const byPipeline = new Map<string, SinkInspector>();
  for (const g of bySink(cfg)) {
    let i: SinkInspector;
    switch (g.sink.type) {
      case "sqlite":
        i = deps.sqlite();
        break;
      case "postgres":
        i = new PostgresSinkInspector(postgresPool(g.sink, { max: 2, name: "sluice-inspector" }), true);
        break;
      case "jetstream":
        if (!deps.nc) throw new Error("an output stream's inspector needs a NATS connection");
        i = new JetStreamOutputInspector(deps.nc, g.pipelines);
        break;
    }
    for (const p of g.pipelines) byPipeline.set(p.name, i);
  }
  return new RoutingSinkInspector(byPipeline);
}
