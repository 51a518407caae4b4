import { execFileSync } from "node:child_process";

/** Integration tests spawn the compiled node processes: compile once before any test runs. */
export default function setup(): void {
  execFileSync(process.execPath, ["node_modules/typescript/bin/tsc", "-p", "tsconfig.json"], {
    stdio: "inherit",
  });
}
