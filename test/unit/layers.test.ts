/**
 * The layers of shared/, read from its folder names: a file may import its own layer and the
 * layers below it, never one above, and no import cycle exists between files. The core's ban on
 * IO is enforced by the linter (biome.json, `noRestrictedImports`); `core-guard.test.ts` proves
 * that rule fires.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const shared = join(root, "shared");

/** Bottom to top: each layer may import the ones before it. */
const LAYERS = [
  "contract",
  "core",
  "telemetry",
  "pipeline",
  "runtime",
  "adapters",
  "producer",
  "testkit",
] as const;

function walk(dir: string, out: string[] = []): string[] {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) walk(p, out);
    else if (name.endsWith(".ts")) out.push(p);
  }
  return out;
}

const layerOf = (file: string): string => relative(shared, file).split("/")[0]!;

function importsOf(file: string): string[] {
  const src = readFileSync(file, "utf8");
  const out: string[] = [];
  for (const m of src.matchAll(/(?:from|import)\s*\(?\s*"(\.{1,2}\/[^"]+)"/g)) {
    out.push(resolve(dirname(file), m[1]!).replace(/\.js$/, ".ts"));
  }
  return out;
}

describe("layers of shared/", () => {
  const files = walk(shared);
  const graph = new Map(files.map((f) => [f, importsOf(f)]));

  it("has only the named layers at its top level", () => {
    const top = new Set(files.map(layerOf));
    for (const l of top) expect(LAYERS as readonly string[]).toContain(l);
  });

  it("imports only point down", () => {
    const upward: string[] = [];
    for (const [file, deps] of graph) {
      const from = LAYERS.indexOf(layerOf(file) as (typeof LAYERS)[number]);
      for (const d of deps) {
        if (!d.startsWith(shared)) {
          upward.push(`${relative(root, file)} -> ${relative(root, d)} (outside shared/)`);
          continue;
        }
        const to = LAYERS.indexOf(layerOf(d) as (typeof LAYERS)[number]);
        if (to > from) upward.push(`${relative(root, file)} -> ${relative(root, d)}`);
      }
    }
    expect(upward).toEqual([]);
  });

  it("has no import cycle", () => {
    const state = new Map<string, "visiting" | "done">();
    const cycles: string[] = [];
    const visit = (f: string, path: string[]): void => {
      const s = state.get(f);
      if (s === "done") return;
      if (s === "visiting") {
        cycles.push([...path.slice(path.indexOf(f)), f].map((p) => relative(root, p)).join(" -> "));
        return;
      }
      state.set(f, "visiting");
      for (const d of graph.get(f) ?? []) if (graph.has(d)) visit(d, [...path, f]);
      state.set(f, "done");
    };
    for (const f of files) visit(f, []);
    expect(cycles).toEqual([]);
  });
});
