import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadConfigFile, parseConfigText } from "../../shared/adapters/config-file.js";
import { configRevision, parseConfig } from "../../shared/contract/config.js";

const dir = mkdtempSync(join(tmpdir(), "sluice-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The message of the error `fn` throws (the test fails if it does not throw). */
function errorOf(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (err) {
    return err as { code: string; message: string };
  }
  throw new Error("expected an error");
}

describe("config file", () => {
  it("reads YAML, with every field it leaves out at its default", () => {
    const cfg = parseConfigText(
      "pipelines:\n  - name: orders\n    shards: 8\nworker:\n  lingerMs: 10\n",
      "c.yaml",
    );
    expect(cfg.pipelines).toHaveLength(1);
    expect(cfg.pipelines[0]).toMatchObject({ name: "orders", shards: 8 });
    expect(cfg.worker.lingerMs).toBe(10);
    const defaults = parseConfig({});
    expect(cfg.worker.batchMax).toBe(defaults.worker.batchMax);
    expect(cfg.timing).toEqual(defaults.timing);
  });

  it("still reads JSON, and gives the same config as the same YAML", () => {
    const json = parseConfigText('{"pipelines": [{"name": "orders", "shards": 8}]}', "c.json");
    const yaml = parseConfigText("pipelines:\n  - name: orders\n    shards: 8\n", "c.yaml");
    expect(json).toEqual(yaml);
  });

  it("an empty file or no file is the built-in default", () => {
    expect(parseConfigText("", "e.yaml")).toEqual(parseConfig({}));
    expect(loadConfigFile(undefined)).toEqual(parseConfig({}));
  });

  it("names file, line, column, field and expected shape for a value of the wrong type", () => {
    const e = errorOf(() =>
      parseConfigText(
        'pipelines:\n  - name: orders\n    shards: "8"\nworker:\n  lingerMs: lots\n',
        "bad.yaml",
      ),
    );
    expect(e.code).toBe("INVALID_CONFIG");
    expect(e.message).toContain(
      "bad.yaml:3:13: pipelines[0].shards: Invalid input: expected number, received string",
    );
    expect(e.message).toContain("bad.yaml:5:13: worker.lingerMs:");
  });

  it("refuses an unknown field (a typo would otherwise be ignored), pointing at the key", () => {
    const e = errorOf(() => parseConfigText("pipelines:\n  - name: a\n    shard: 4\n", "typo.yaml"));
    expect(e.message).toContain("typo.yaml:3:5: pipelines[0]: unknown field shard");
  });

  it("points at the line and column of a syntax error, in YAML and in JSON", () => {
    expect(
      errorOf(() => parseConfigText("pipelines:\n  - name: a\n   shards: 4\n", "s.yaml")).message,
    ).toMatch(/s\.yaml:3:\d+: /);
    expect(errorOf(() => parseConfigText('{"pipelines": [\n{"name": "a"},\n', "s.json")).message).toMatch(
      /s\.json:\d+:\d+: /,
    );
  });

  it("keeps the checks across fields, naming the file", () => {
    const e = errorOf(() => parseConfigText("pipelines:\n  - name: a\n  - name: a\n", "dup.yaml"));
    expect(e.message).toBe("dup.yaml: pipeline 'a' is defined twice");
  });

  it("`sluice config check` exits 0 on a good file and 1 with the errors on a bad one", () => {
    const main = join(import.meta.dirname, "../../dist/nodes/cli/main.js");
    const good = join(dir, "good.yaml");
    writeFileSync(good, "pipelines:\n  - name: orders\n    shards: 8\n");
    expect(execFileSync(process.execPath, [main, "config", "check", good], { encoding: "utf8" })).toContain(
      "ok; pipelines: orders (8 shards, sink sqlite)",
    );
    const bad = join(dir, "bad.yaml");
    writeFileSync(bad, "pipelines:\n  - name: orders\n    shards: 0\n");
    let status = 0;
    let stderr = "";
    try {
      execFileSync(process.execPath, [main, "config", "check", bad], { encoding: "utf8", stdio: "pipe" });
    } catch (err) {
      ({ status, stderr } = err as { status: number; stderr: string });
    }
    expect(status).toBe(1);
    expect(stderr).toContain(`${bad}:3:13: pipelines[0].shards:`);
  });
});

describe("configRevision", () => {
  const revision = (p: unknown) => configRevision(parseConfig({ pipelines: [p] }).pipelines[0]!);

  it("is the same however the config is written, defaults filled", () => {
    const a = revision({ name: "orders", shards: 8, stages: [{ dedupe: { key: "id", window: "1h" } }] });
    const b = revision({
      stages: [{ dedupe: { window: "60m", key: "id" } }],
      shards: 8,
      name: "orders",
      replicas: 3,
    });
    expect(a).toMatch(/^[0-9a-f]{16}$/);
    expect(b).toBe(a);
  });

  it("changes with any setting or stage", () => {
    const base = { name: "orders", shards: 8, stages: [{ dedupe: { key: "id", window: "1h" } }] };
    const a = revision(base);
    expect(revision({ ...base, shards: 4 })).not.toBe(a);
    expect(revision({ ...base, stages: [{ dedupe: { key: "id", window: "2h" } }] })).not.toBe(a);
    expect(revision({ ...base, rules: [{ name: "r", notNull: "id" }] })).not.toBe(a);
  });
});
