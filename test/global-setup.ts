import { execFileSync } from "node:child_process";
import { readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

/**
 * Integration tests spawn the compiled node processes: compile once before any test runs.
 * Returns the teardown, run once every test file is done: the `sluice-*` folders this run made
 * in the temporary directory (clusters' stores and logs, private databases) are removed, so a
 * machine that runs the suite again and again does not fill its disk. `SLUICE_KEEP_TEST_DIRS=1`
 * keeps them for a look after a failure.
 */
export default function setup(): () => void {
  // Folders made from here on are this run's (ms; file times have at least this resolution).
  const startedMs = Date.now() - 1_000;
  execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.json"], {
    stdio: "inherit",
  });
  return () => {
    if (process.env.SLUICE_KEEP_TEST_DIRS) return;
    const tmp = tmpdir();
    for (const name of readdirSync(tmp)) {
      if (!name.startsWith("sluice-")) continue;
      const path = join(tmp, name);
      try {
        const st = statSync(path);
        if ((st.birthtimeMs || st.ctimeMs) >= startedMs) rmSync(path, { recursive: true, force: true });
      } catch {
        // Gone meanwhile, or not ours to remove.
      }
    }
  };
}
