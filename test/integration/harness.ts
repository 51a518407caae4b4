/**
 * Integration harness: a real local cluster (3 nats-server processes, coordinator and
 * worker processes) in a unique directory on unique loopback ports, torn down after the test.
 */
import { mkdtempSync, readFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { NatsConnection } from "@nats-io/transport-node";
import {
  type ClusterFile,
  connectCluster,
  isOurProcess,
  openSinkInspector,
  readClusterConfig,
  readClusterFile,
} from "../../nodes/cli/cluster-file.js";
import { type LoadSummary, runLoad } from "../../nodes/cli/load.js";
import { down, type UpOptions, up } from "../../nodes/cli/local-cluster.js";
import { isSettled } from "../../nodes/cli/readiness.js";
import { gatherStatus, type StatusReport } from "../../nodes/cli/status.js";
import { countCommitted, type VerifyReport, verify } from "../../nodes/cli/verify.js";
import { waitUntil } from "../../nodes/cli/wait.js";
import { parseConfig, type SluiceConfig } from "../../shared/contract/config.js";
import type { SinkInspector } from "../../shared/contract/ports.js";

/** Faster protocol timings so fault scenarios complete quickly; same code paths. */
export const testConfig = (overrides: Partial<SluiceConfig["timing"]> = {}): SluiceConfig =>
  parseConfig({
    pipelines: [{ name: "demo", shards: 16 }],
    timing: {
      heartbeatMs: 150,
      failureTimeoutMs: 900,
      leaseTtlMs: 900,
      leaderTtlMs: 1200,
      handoffTimeoutMs: 4000,
      ...overrides,
    },
    worker: { batchMax: 256, pullWaitMs: 50 },
  });

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

/** A base port whose client, cluster, monitor and node HTTP ranges are all free on 127.0.0.1. */
export async function freePortBase(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * 590) * 10;
    const nodeHttp = Array.from({ length: 10 }, (_, i) => base + 6000 + i);
    // Client, route and monitor ports of three nodes, the nodes' HTTP ports, a private PostgreSQL.
    const ports = [
      ...[0, 1, 2].flatMap((i) => [base + i, base + 2000 + i, base + 4000 + i]),
      ...nodeHttp,
      base + 7000,
    ];
    const free = await Promise.all(ports.map(portFree));
    if (free.every(Boolean)) return base;
  }
  throw new Error("no free port range");
}

export interface TestCluster {
  dir: string;
  file(): ClusterFile;
  cfg: SluiceConfig;
  nc: NatsConnection;
  /** The read side of the cluster's sink. */
  sink: SinkInspector;
  status(): Promise<StatusReport>;
  /** Runs a load in the background; the promise resolves when every publish is confirmed. */
  load(
    count: number,
    rate: number,
    ackLog?: string,
  ): { done: Promise<LoadSummary>; ackLog: string; abort(): void };
  waitCommitted(atLeast: number, timeoutMs?: number): Promise<number>;
  verify(ackLog: string): Promise<VerifyReport>;
  workerPid(id: string): number;
  logOf(id: string): string;
  stop(): Promise<void>;
}

export async function startTestCluster(
  opts: {
    workers?: number;
    coordinators?: number;
    config?: SluiceConfig;
    /**
     * The default cluster of `sluice up`: TLS, a user per role, encrypted store. `nc` is then
     * the reader's connection and loads publish as the producer. Off, `nc` may do anything
     * (tests that reach into the control plane need that).
     */
    secured?: boolean;
  } & Pick<UpOptions, "sink" | "postgresUrl">,
): Promise<TestCluster> {
  const dir = mkdtempSync(join(tmpdir(), "sluice-it-"));
  const c = await up({
    dir,
    workers: opts.workers ?? 3,
    coordinators: opts.coordinators ?? 2,
    portBase: await freePortBase(),
    config: opts.config ?? testConfig(),
    insecure: opts.secured !== true,
    ...(opts.sink ? { sink: opts.sink } : {}),
    ...(opts.postgresUrl ? { postgresUrl: opts.postgresUrl } : {}),
  });
  // As the nodes read it: with the sink `up` chose.
  const cfg = readClusterConfig(c);
  const nc = await connectCluster(c, "reader", "sluice-test");
  const pub = c.security ? await connectCluster(c, "producer", "sluice-test-load") : nc;
  const sink = openSinkInspector(c, nc);
  let loads = 0;
  const stoppers: Array<() => void> = [];
  const tc: TestCluster = {
    dir,
    cfg,
    nc,
    sink,
    file: () => readClusterFile(dir),
    status: () => gatherStatus(nc, cfg, sink),
    load(count, rate, ackLog = join(dir, `acks-${++loads}.jsonl`)) {
      const ac = new AbortController();
      stoppers.push(() => ac.abort());
      return {
        done: runLoad(pub, { pipeline: "demo", count, rate, ackLog, keys: 500, signal: ac.signal }),
        ackLog,
        abort: () => ac.abort(),
      };
    },
    waitCommitted: (atLeast, timeoutMs = 60_000) =>
      waitUntil(
        `${atLeast} committed rows`,
        timeoutMs,
        async () => {
          const n = await countCommitted(sink, "demo");
          return n >= atLeast ? n : undefined;
        },
        100,
      ),
    verify: (ackLog) => verify(sink, "demo", ackLog),
    workerPid(id) {
      const w = readClusterFile(dir).workers.find((x) => x.id === id);
      if (!w) throw new Error(`no worker ${id}`);
      return w.pid;
    },
    logOf: (id) => {
      try {
        return readFileSync(join(dir, "logs", `${id}.log`), "utf8");
      } catch {
        return "";
      }
    },
    async stop() {
      for (const s of stoppers) s();
      await sink.close();
      if (pub !== nc) await pub.close().catch(() => undefined);
      await nc.close().catch(() => undefined);
      // A test may leave a process stopped with SIGSTOP: continue it so it can exit.
      const f = readClusterFile(dir);
      for (const p of [...f.workers, ...f.coordinators, ...f.sinks, ...f.nats]) {
        if (isOurProcess(p.pid, dir)) {
          try {
            process.kill(p.pid, "SIGCONT");
          } catch {
            // gone
          }
        }
      }
      await down(dir);
    },
  };
  return tc;
}

/**
 * Waits until every shard is owned, active and fenced at its epoch, by exactly `workers`
 * (default: every worker in cluster.json), each holding at least one shard.
 */
export function waitSettled(
  tc: TestCluster,
  timeoutMs = 30_000,
  workers: string[] = tc.file().workers.map((w) => w.id),
): Promise<StatusReport> {
  return waitUntil(
    "a settled assignment",
    timeoutMs,
    async () => {
      const s = await tc.status();
      if (!isSettled(s, workers)) return undefined;
      const owners = shardCounts(s);
      return workers.every((w) => (owners.get(w) ?? 0) > 0) ? s : undefined;
    },
    150,
  );
}

export function shardCounts(s: StatusReport): Map<string, number> {
  const m = new Map<string, number>();
  for (const r of s.shards) if (r.owner) m.set(r.owner, (m.get(r.owner) ?? 0) + 1);
  return m;
}
