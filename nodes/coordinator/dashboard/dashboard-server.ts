/**
 * The web dashboard of a coordinator, on the node's HTTP endpoint:
 *
 * - `GET /` the page, `GET /assets/<file>` its script and style sheet;
 * - `GET /api/state` the current DashboardState as JSON;
 * - `GET /api/events` Server-Sent Events: `hello` (state, history, recent events) on connect,
 *   then `state` once a second and `cluster` for every event as it happens.
 *
 * The coordinator polls once a second however many pages are open, and every page is fed from
 * that one poll. Checkpoints come through the sink's inspector port (one request per poll; the
 * SQLite sink answers it over NATS from its own process, so sink.db is never opened here) and
 * lag and progress from one consumer list request per pipeline.
 */
import { existsSync, readFileSync } from "node:fs";
import type { IncomingMessage, ServerResponse } from "node:http";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { ShardConsumerInfo } from "../../../shared/adapters/nats/shard-consumers.js";
import { branchesOf, type SluiceConfig } from "../../../shared/contract/config.js";
import type { Logger } from "../../../shared/contract/logger.js";
import type { Checkpoint, LateRecord, SinkInspector } from "../../../shared/contract/ports.js";
import type { CoordinatorCommand, CoordinatorState } from "../../../shared/core/coordinator-core.js";
import type { LeaderRecord } from "../../../shared/core/leader-election.js";
import type { NodeHttpServer } from "../../node-http.js";
import { type DashboardEvent, DashboardModel, type DashboardState } from "./dashboard-model.js";

// `npm run build` is plain tsc, which copies no assets: the compiled module reads the page from
// the source tree next to the TypeScript it was compiled from.
const here = fileURLToPath(new URL(".", import.meta.url));
const root = /[\\/]dist[\\/]nodes[\\/]coordinator[\\/]dashboard[\\/]?$/.test(here)
  ? resolve(here, "../../../..")
  : resolve(here, "../../..");
export const assetDir = join(root, "nodes", "coordinator", "dashboard", "static");

/** The only files served: a fixed list, so no request path reaches the file system. */
const ASSETS: Record<string, string> = {
  "index.html": "text/html; charset=utf-8",
  "dashboard.js": "text/javascript; charset=utf-8",
  "dashboard.css": "text/css; charset=utf-8",
};

// The page loads nothing from anywhere but this endpoint; the browser enforces it.
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

export interface DashboardDeps {
  self: string;
  shards: readonly string[];
  pipelines: readonly string[];
  failureTimeoutMs: number;
  /** The pipelines and merges, for the merges' convergence (none without). */
  config?: Pick<SluiceConfig, "pipelines" | "merges">;
  /** The runtime's own view of members and entries (kept warm on standbys too). */
  state(): CoordinatorState;
  readLeader(): Promise<LeaderRecord | null>;
  listConsumers(pipeline: string): Promise<Map<string, ShardConsumerInfo>>;
  /** The sink's read side: its checkpoints, and the merge branches' late records. */
  sink: Pick<SinkInspector, "checkpoints" | "lateRecords">;
  log: Logger;
  /** Default 1000. */
  pollMs?: number;
  now?: () => number;
}

export class DashboardServer {
  readonly model: DashboardModel;
  private readonly clients = new Set<ServerResponse>();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private stopped = false;
  private polling: Promise<void> | null = null;
  private readonly now: () => number;

  constructor(private readonly d: DashboardDeps) {
    this.now = d.now ?? Date.now;
    this.model = new DashboardModel({
      self: d.self,
      shards: d.shards,
      failureTimeoutMs: d.failureTimeoutMs,
      ...(d.config ? { config: d.config } : {}),
      onEvent: (e) => this.broadcast("cluster", e),
    });
  }

  /** For the runtime's `onCommand` hook, which runs before the command: it must never throw. */
  command(c: CoordinatorCommand): void {
    try {
      this.model.command(c, this.now());
    } catch (err) {
      this.d.log.warn({ err }, "dashboard: command not recorded");
    }
  }

  /** For the runtime's `onLeadership` hook. */
  leadership(leader: boolean, term: number): void {
    try {
      this.model.leadership(leader, term, this.now());
    } catch (err) {
      this.d.log.warn({ err }, "dashboard: leadership change not recorded");
    }
  }

  mount(http: NodeHttpServer): this {
    http
      .route("/", (_req, res) => this.asset("index.html", res))
      .route("/assets/*", (req, res) => this.asset(pathOf(req).slice("/assets/".length), res))
      .route("/api/state", async (_req, res) => {
        const state = await this.ready();
        res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
        res.end(JSON.stringify(state));
      })
      .route("/api/events", (req, res) => this.subscribe(req, res))
      .route("/api/*", (_req, res) => {
        res.writeHead(404, { "content-type": "application/json" }).end('{"error":"not found"}');
      });
    return this;
  }

  /** Starts polling once a second. */
  start(): void {
    if (this.polling || this.stopped) return;
    const loop = async (): Promise<void> => {
      const began = this.now();
      await this.poll().catch((err: unknown) => this.d.log.warn({ err }, "dashboard poll failed"));
      if (this.stopped) return;
      const wait = Math.max(50, (this.d.pollMs ?? 1000) - (this.now() - began));
      this.timer = setTimeout(() => {
        this.polling = loop();
      }, wait);
    };
    this.polling = loop();
  }

  /** Stops polling and ends every event stream. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.polling?.catch(() => undefined);
    for (const res of this.clients) res.end();
    this.clients.clear();
  }

  /** One observation: the slow parts (NATS requests) first, then the runtime's view at that moment. */
  async poll(): Promise<DashboardState> {
    let sinkError: string | null = null;
    const [leader, consumers, checkpoints, late] = await Promise.all([
      this.d.readLeader().catch(() => undefined),
      Promise.all(this.d.pipelines.map(async (p) => [p, await this.d.listConsumers(p)] as const))
        .then((pairs) => new Map(pairs))
        .catch(() => null),
      this.d.sink.checkpoints().then(
        (all) => {
          const byShard = new Map<string, Checkpoint>(all.map((c) => [`${c.pipeline}.${c.shard}`, c]));
          // A shard the sink holds no checkpoint for has committed nothing and is fenced at 0.
          return Object.fromEntries(
            this.d.shards.map((shard) => [shard, byShard.get(shard) ?? { epoch: 0, seq: 0 }] as const),
          );
        },
        // The sink did not answer: every checkpoint unknown for this refresh.
        (err: unknown) => {
          sinkError = err instanceof Error ? err.message : String(err);
          return Object.fromEntries(this.d.shards.map((shard) => [shard, null] as const));
        },
      ),
      this.lateRecords(),
    ]);
    const st = this.d.state();
    const entries = Object.fromEntries(Object.entries(st.entries).map(([k, v]) => [k, v.entry]));
    const { state } = this.model.observe({
      at: this.now(),
      leader,
      members: st.members,
      entries,
      consumers,
      checkpoints,
      sinkError,
      late,
    });
    this.broadcast("state", state);
    return state;
  }

  /** The merge branches' late records (null when there is no merge or the sink did not answer). */
  private async lateRecords(): Promise<Map<string, LateRecord[]> | null> {
    const cfg = this.d.config;
    const read = this.d.sink.lateRecords?.bind(this.d.sink);
    if (!cfg || cfg.merges.length === 0 || !read) return null;
    const branches = cfg.merges.flatMap((m) => branchesOf(cfg, m.name).map((p) => p.name));
    try {
      return new Map(await Promise.all(branches.map(async (p) => [p, await read(p)] as const)));
    } catch {
      return null;
    }
  }

  /** The latest state; the first request may come before the first poll finished. */
  private async ready(): Promise<DashboardState> {
    const s = this.model.state;
    if (s) return s;
    await this.polling;
    return this.model.state ?? (await this.poll());
  }

  private async subscribe(req: IncomingMessage, res: ServerResponse): Promise<void> {
    res.writeHead(200, {
      "content-type": "text/event-stream",
      "cache-control": "no-store",
      connection: "keep-alive",
      // Tells reverse proxies (nginx) not to buffer the stream.
      "x-accel-buffering": "no",
    });
    res.write("retry: 2000\n\n");
    this.clients.add(res);
    req.on("close", () => this.clients.delete(res));
    const state = await this.ready();
    if (res.writableEnded) return;
    send(res, "hello", { state, history: this.model.history(), events: this.model.recentEvents() });
  }

  private broadcast(event: "state" | "cluster", data: DashboardState | DashboardEvent): void {
    for (const res of this.clients) send(res, event, data);
  }

  private asset(name: string, res: ServerResponse): void {
    const type = ASSETS[name];
    const file = join(assetDir, name);
    if (!type || !existsSync(file)) {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
      return;
    }
    res.writeHead(200, {
      "content-type": type,
      "cache-control": "no-cache",
      "content-security-policy": CSP,
      "x-content-type-options": "nosniff",
    });
    res.end(readFileSync(file));
  }
}

function pathOf(req: IncomingMessage): string {
  return new URL(req.url ?? "/", "http://localhost").pathname;
}

function send(res: ServerResponse, event: string, data: unknown): void {
  if (!res.writableEnded) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}
