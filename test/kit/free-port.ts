/** A free TCP port on 127.0.0.1 for tests that start a server of their own. */
import { createServer } from "node:net";

/** A port the kernel just handed out on 127.0.0.1 (free at the time of the call). */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      s.close(() =>
        typeof addr === "object" && addr ? resolvePort(addr.port) : reject(new Error("no port")),
      );
    });
  });
}
