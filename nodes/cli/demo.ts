/**
 * The main job: a local cluster ingesting a demo workload while a worker is SIGKILLed and a
 * new one joins, then the exactly-once check.
 */
import { existsSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { pipelineOf, type SluiceConfig } from "../../shared/contract/config.js";
import { parseShardKey } from "../../shared/contract/ownership.js";
import type { SinkInspector } from "../../shared/contract/ports.js";
import {
  type ClusterFile,
  connectCluster,
  connectProducer,
  isOurProcess,
  openSinkInspector,
  readClusterConfig,
  readClusterFile,
  writeClusterFile,
} from "./cluster-file.js";
import { measureFailover } from "./failover.js";
import { type Interrupt, Interrupted } from "./interrupt.js";
import { runLoad } from "./load.js";
import { addWorker, down, type UpOptions, up } from "./local-cluster.js";
import { waitSettled } from "./readiness.js";
import { gatherStatus, type StatusReport } from "./status.js";
import { countCommitted, formatVerify, verify } from "./verify.js";
import { waitUntil } from "./wait.js";

export interface DemoOptions extends Pick<UpOptions, "sink" | "postgresUrl"> {
  dir: string;
  count: number;
  rate: number;
  portBase: number;
  keep: boolean;
  /** Ctrl-C: stops the load and the checks, then the cluster (unless `keep`). */
  interrupt?: Interrupt;
}

/** `p`, or an `Interrupted` rejection once the demo is interrupted. */
export const guarded =
  (o: Pick<DemoOptions, "interrupt">) =>
  <T>(p: Promise<T>): Promise<T> =>
    o.interrupt ? o.interrupt.guard(p) : p;

export const say = (s: string): void => console.log(`[demo] ${s}`);

/** The demo's directory, emptied; refused while a cluster started there still runs. */
export function wipeDemoDir(given: string): string {
  const dir = resolve(given);
  if (existsSync(join(dir, "cluster.json"))) {
    const old = readClusterFile(dir);
    if (
      [...old.nats, ...(old.sinks ?? []), ...old.coordinators, ...old.workers].some((p) =>
        isOurProcess(p.pid, dir),
      )
    ) {
      throw new Error(`a cluster is still running in ${dir}; stop it with 'npx sluice down --dir ${given}'`);
    }
    rmSync(dir, { recursive: true, force: true });
  }
  return dir;
}

/**
 * The demo's worker churn: called with the records sent so far, it SIGKILLs the first worker at
 * 30 % of `total` (noting its shards, from `sluice status`) and adds a worker at 50 %.
 */
export class WorkerChurn {
  readonly victim: ClusterFile["workers"][number];
  killedAt = 0;
  killedShards: Array<{ pipeline: string; shard: number }> = [];
  private killing: Promise<void> | null = null;
  private joined = false;

  constructor(
    private readonly c: ClusterFile,
    private readonly total: number,
    private readonly status: () => Promise<StatusReport>,
  ) {
    this.victim = c.workers[0]!;
  }

  step(sent: number): void {
    if (!this.killing && sent >= this.total * 0.3) {
      this.killing = this.status().then((st) => {
        this.killedShards = st.shards
          .filter((r) => r.owner === this.victim.id)
          .map((r) => parseShardKey(r.shard)!);
        this.killedAt = Date.now();
        try {
          process.kill(this.victim.pid, "SIGKILL");
        } catch {
          // already gone
        }
        const cf = readClusterFile(this.c.dir);
        cf.workers = cf.workers.filter((w) => w.id !== this.victim.id);
        writeClusterFile(cf);
        say(
          `SIGKILL worker ${this.victim.id} (pid ${this.victim.pid}, ${this.killedShards.length} shards) at ${sent} records`,
        );
      });
    }
    if (!this.joined && sent >= this.total * 0.5) {
      this.joined = true;
      const w = addWorker(this.c.dir);
      say(`added worker ${w.id} (pid ${w.pid}) at ${sent} records`);
    }
  }

  /** Resolves once the kill (if begun) is done. */
  async settled(): Promise<void> {
    await this.killing;
  }

  /** Kill time to the first commit elsewhere of the victim's shards, over `pipelines`. */
  async failover(sink: SinkInspector, pipelines: readonly string[]): Promise<string> {
    let slowest: number | null = 0;
    const counts: string[] = [];
    for (const p of pipelines) {
      const shards = this.killedShards.filter((r) => r.pipeline === p).map((r) => r.shard);
      counts.push(`${p} ${shards.length}`);
      if (shards.length === 0) continue;
      const f = await measureFailover(sink, p, shards, this.victim.id, this.killedAt);
      slowest = f.maxMs === null || slowest === null ? null : Math.max(slowest, f.maxMs);
    }
    const which = pipelines.length > 1 ? ` (${counts.join(", ")})` : "";
    return `failover: ${this.killedShards.length} shards${which} of ${this.victim.id} committing elsewhere ${
      slowest === null ? "(not all yet)" : `${(slowest / 1000).toFixed(2)} s`
    } after SIGKILL`;
  }
}

/**
 * A demo's cluster in a fresh `o.dir`: 3 NATS nodes, 2 coordinators, 3 workers, the chosen sink
 * and `config` (the built-in one when absent). `about` says what the demo runs, after the line
 * that says what starts.
 */
export async function startDemoCluster(
  o: DemoOptions,
  config?: SluiceConfig,
  about?: string,
): Promise<{ dir: string; c: ClusterFile; t0: number }> {
  const dir = wipeDemoDir(o.dir);
  say(
    `starting a local cluster in ${dir}: 3 NATS nodes (JetStream R3), 2 coordinators, 3 workers; sink ${o.sink ?? "sqlite"}${o.sink === "postgres" && !o.postgresUrl ? " (a private PostgreSQL server)" : ""}`,
  );
  if (about) say(about);
  const t0 = Date.now();
  const c = await up({
    dir,
    workers: 3,
    coordinators: 2,
    portBase: o.portBase,
    ...(config ? { config } : {}),
    ...(o.sink ? { sink: o.sink } : {}),
    ...(o.postgresUrl ? { postgresUrl: o.postgresUrl } : {}),
  });
  return { dir, c, t0 };
}

export async function runDemo(o: DemoOptions): Promise<boolean> {
  const { dir, c, t0 } = await startDemoCluster(o);
  const cfg = readClusterConfig(c);
  const pipeline = "demo";
  // Near the stream leader: the load's publishes skip a route hop.
  const pub = await connectProducer(c, pipelineOf(cfg, pipeline), "sluice-demo-load");
  // Status and the sink are read as the reader: the demo uses each role as a user would.
  const nc = await connectCluster(c, "reader", "sluice-demo");
  const sink = openSinkInspector(c, nc);
  let ok = false;
  let committedPoll: ReturnType<typeof setInterval> | undefined;
  const guard = guarded(o);
  try {
    await guard(waitSettled(nc, cfg, sink, 60_000));
    say(
      `cluster ready in ${((Date.now() - t0) / 1000).toFixed(1)} s; NATS at ${c.nats.map((n) => n.url).join(", ")}`,
    );
    const ackLog = join(dir, "demo-acks.jsonl");
    const churn = new WorkerChurn(c, o.count, () => gatherStatus(nc, cfg, sink));
    const tty = process.stdout.isTTY;
    let lastLine = 0;
    const loadStart = Date.now();
    say(`loading ${o.count} records into '${pipeline}' at ${o.rate}/s; ack log ${ackLog}`);
    // The progress line shows the sink's row count as last read; reading is asynchronous.
    let committed = 0;
    committedPoll = setInterval(() => {
      void countCommitted(sink, pipeline).then((n) => {
        committed = n;
      });
    }, 250);
    const summary = await runLoad(pub, {
      pipeline,
      count: o.count,
      rate: o.rate,
      ackLog,
      keys: 1000,
      ...(o.interrupt ? { signal: o.interrupt.signal } : {}),
      onProgress: (p) => {
        churn.step(p.sent);
        const now = Date.now();
        if (now - lastLine >= (tty ? 250 : 2000)) {
          lastLine = now;
          const rate = Math.round(committed / ((now - loadStart) / 1000));
          const line = `published ${p.sent}/${o.count}  acked ${p.acked}  committed ${committed}  (${rate} rec/s)`;
          if (tty) process.stdout.write(`\r[demo] ${line}   `);
          else say(line);
        }
      },
    });
    clearInterval(committedPoll);
    if (tty) process.stdout.write("\n");
    if (summary.stopped === "aborted") throw new Interrupted();
    await churn.settled();
    say(
      `load done: ${summary.acked} acked, ${summary.failed} failed, ${summary.timeout} timed out in ${(summary.elapsedMs / 1000).toFixed(1)} s`,
    );
    const drained = await guard(
      waitUntil(
        "the sink to catch up",
        120_000,
        async () => {
          const n = await countCommitted(sink, pipeline);
          return n >= summary.acked ? n : undefined;
        },
        250,
      ).catch(() => countCommitted(sink, pipeline)),
    );
    const elapsed = (Date.now() - loadStart) / 1000;
    say(
      `sink has ${drained} rows; end-to-end ${(drained / elapsed).toFixed(0)} records/s over ${elapsed.toFixed(1)} s`,
    );
    const report = await guard(verify(sink, pipeline, ackLog));
    console.log(formatVerify(report));
    say(await guard(churn.failover(sink, [pipeline])));
    ok = report.ok;
  } catch (err) {
    if (!(err instanceof Interrupted)) throw err;
    say("interrupted: no verdict");
  } finally {
    clearInterval(committedPoll);
    await sink.close();
    await pub.close().catch(() => undefined);
    await nc.close().catch(() => undefined);
    await endDemo(o, dir);
  }
  return ok;
}

/** Stops the demo's cluster, or with `--keep` leaves it running and says how to stop it. */
export async function endDemo(o: Pick<DemoOptions, "keep" | "dir">, dir: string): Promise<void> {
  if (o.keep) {
    say(`cluster left running; stop it with: npx sluice down --dir ${o.dir}`);
    return;
  }
  say("stopping the cluster");
  await down(dir);
}
