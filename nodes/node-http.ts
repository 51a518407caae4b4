/**
 * The one HTTP endpoint of a node process (127.0.0.1 unless `--http-bind` says otherwise):
 * `/healthz` (alive), `/readyz` (ready for work: 200, or 503 with the reason) and `/metrics`
 * (Prometheus) on every node, the dashboard and its API on coordinators. Routes are registered
 * by path; a node started without `--http-port` serves nothing.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export type HttpHandler = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

export class NodeHttpServer {
  private readonly routes = new Map<string, HttpHandler>();
  private readonly prefixes: Array<[string, HttpHandler]> = [];
  private server: Server | null = null;
  private notReady: () => string | null = () => null;

  constructor() {
    // Alive: the process has started and its event loop answers.
    this.route(
      "/healthz",
      (_req, res) => void res.writeHead(200, { "content-type": "text/plain" }).end("ok\n"),
    );
    this.route("/readyz", (_req, res) => {
      const why = this.notReady();
      res
        .writeHead(why === null ? 200 : 503, { "content-type": "text/plain" })
        .end(why === null ? "ready\n" : `not ready: ${why}\n`);
    });
  }

  /** What `/readyz` asks: null when ready, else why not. Ready by default. */
  readiness(check: () => string | null): this {
    this.notReady = check;
    return this;
  }

  /** An exact path (`/metrics`), or a prefix when it ends with `/*` (`/assets/*`). */
  route(path: string, handler: HttpHandler): this {
    if (path.endsWith("/*")) this.prefixes.push([path.slice(0, -1), handler]);
    else this.routes.set(path, handler);
    return this;
  }

  /** Listens on `host`:`port` (0 picks a free port); resolves with the bound port. */
  async start(port: number, host = "127.0.0.1"): Promise<number> {
    if (this.server) return (this.server.address() as AddressInfo).port;
    const server = createServer((req, res) => {
      const path = new URL(req.url ?? "/", "http://localhost").pathname;
      const handler = this.routes.get(path) ?? this.prefixes.find(([prefix]) => path.startsWith(prefix))?.[1];
      if (!handler) {
        res.writeHead(404, { "content-type": "text/plain" }).end("not found\n");
        return;
      }
      Promise.resolve(handler(req, res)).catch((err: unknown) => {
        if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
        res.end(`error: ${(err as Error).message}\n`);
      });
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host, () => resolve());
    });
    return (server.address() as AddressInfo).port;
  }

  /** Stops listening and ends open connections (server-sent event streams too). */
  async stop(): Promise<void> {
    const server = this.server;
    this.server = null;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
