/**
 * The linter guards the core: a file under shared/core that imports IO (node:*, NATS, SQLite,
 * PostgreSQL, OpenTelemetry, pino), a layer above it, or reads the clock fails `biome lint`.
 * Proven here on planted files, linted with the project's own biome.json in a scratch tree.
 */
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, describe, expect, it } from "vitest";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const biome = join(root, "node_modules", ".bin", "biome");
const scratch = mkdtempSync(join(tmpdir(), "sluice-core-guard-"));
copyFileSync(join(root, "biome.json"), join(scratch, "biome.json"));
mkdirSync(join(scratch, "shared", "core"), { recursive: true });
mkdirSync(join(scratch, "shared", "contract"), { recursive: true });
writeFileSync(
  join(scratch, "shared", "contract", "errors.ts"),
  "export const ErrorCode = { Fenced: 'FENCED' };\n",
);

/** Lints one planted file; returns biome's exit status and what it printed. */
function lint(folder: string, name: string, source: string): { status: number | null; out: string } {
  const file = join(scratch, "shared", folder, name);
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(file, source);
  const r = spawnSync(biome, ["lint", "--colors=off", `shared/${folder}/${name}`], {
    cwd: scratch,
    encoding: "utf8",
  });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

afterAll(() => rmSync(scratch, { recursive: true, force: true }));

describe("the linter guards shared/core", () => {
  const planted: Array<[string, string]> = [
    ["node built-in", 'import { readFileSync } from "node:fs";\nexport const x = readFileSync;\n'],
    ["bare built-in", 'import fs from "fs";\nexport const x = fs;\n'],
    ["NATS", 'import { connect } from "@nats-io/transport-node";\nexport const x = connect;\n'],
    ["SQLite", 'import Database from "better-sqlite3";\nexport const x = Database;\n'],
    ["PostgreSQL", 'import pg from "pg";\nexport const x = pg;\n'],
    ["OpenTelemetry", 'import { trace } from "@opentelemetry/api";\nexport const x = trace;\n'],
    ["pino", 'import { pino } from "pino";\nexport const x = pino;\n'],
    [
      "an adapter",
      'import { SqliteSink } from "../adapters/sink/sqlite-sink.js";\nexport const x = SqliteSink;\n',
    ],
    [
      "a runtime",
      'import { WorkerRuntime } from "../runtime/worker-runtime.js";\nexport const x = WorkerRuntime;\n',
    ],
    ["the wall clock", "export const now = (): number => Date.now();\n"],
    ["a timer", "export const later = (f: () => void): unknown => setTimeout(f, 1);\n"],
  ];
  for (const [what, source] of planted) {
    it(`fails a core file that uses ${what}`, () => {
      const r = lint("core", `planted-${what.replace(/\W+/g, "-")}.ts`, source);
      expect(r.status, r.out).not.toBe(0);
      expect(r.out).toMatch(/noRestricted(Imports|Globals)/);
      expect(r.out).toMatch(/shared\/core is (pure|deterministic)|imports only shared\/contract/);
    });
  }

  it("passes a core file that imports only the contract and pure libraries", () => {
    const r = lint(
      "core",
      "planted-fine.ts",
      'import { assign } from "xstate";\nimport { ErrorCode } from "../contract/errors.js";\nexport const x = [assign, ErrorCode];\n',
    );
    expect(r.status, r.out).toBe(0);
  });

  it("leaves the layers above the core free to do IO", () => {
    const r = lint(
      "adapters",
      "planted-io.ts",
      'import { readFileSync } from "node:fs";\nexport const x = readFileSync;\n',
    );
    expect(r.status, r.out).toBe(0);
  });
});
