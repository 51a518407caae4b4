/** Command-line options shared by the worker and coordinator processes. */
import { Command } from "commander";
import { loadConfigFile } from "../shared/adapters/config-file.js";
import type { SluiceConfig } from "../shared/contract/config.js";

export interface NodeOptions {
  id: string;
  servers: string[];
  config: SluiceConfig;
  sink: string;
  capacity: number;
  /** Port of the node's HTTP endpoint on 127.0.0.1 (metrics, dashboard); 0 = none. */
  httpPort: number;
}

export function parseNodeOptions(role: "worker" | "coordinator" | "sink", argv: string[]): NodeOptions {
  const cmd = new Command(`sluice-${role}`)
    .requiredOption("--id <id>", "node id, unique in the cluster")
    .requiredOption("--servers <urls>", "comma-separated NATS URLs")
    .option("--config <file>", "cluster config (YAML or JSON); built-in defaults when absent")
    .option("--sink <file>", "SQLite sink file", "sink.db")
    .option("--capacity <n>", "relative shard capacity of a worker", "1")
    .option("--http-port <port>", "HTTP endpoint on 127.0.0.1 (/metrics; the dashboard on coordinators)", "0")
    .parse(argv);
  const o = cmd.opts<{
    id: string;
    servers: string;
    config?: string;
    sink: string;
    capacity: string;
    httpPort: string;
  }>();
  return {
    id: o.id,
    servers: o.servers.split(",").filter(Boolean),
    config: loadConfigFile(o.config),
    sink: o.sink,
    capacity: Number(o.capacity) > 0 ? Number(o.capacity) : 1,
    httpPort: Number.isInteger(Number(o.httpPort)) && Number(o.httpPort) > 0 ? Number(o.httpPort) : 0,
  };
}

/** Runs `stop` once on SIGTERM/SIGINT, then exits; a second signal exits at once. */
export function onShutdown(stop: () => Promise<void>): void {
  let stopping = false;
  const handler = (sig: NodeJS.Signals): void => {
    if (stopping) process.exit(130);
    stopping = true;
    void stop()
      .then(() => process.exit(0))
      .catch(() => process.exit(1));
    void sig;
  };
  process.on("SIGTERM", handler);
  process.on("SIGINT", handler);
}
