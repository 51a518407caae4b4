/**
 * Reads the cluster config from a file, YAML or JSON (YAML's flow style is a superset of JSON,
 * so one parser reads both; see `contract/config.ts` for the schema). Every error names the
 * file, the line and the column, and the field's expected shape, so a typo is found without
 * reading the schema.
 */
import { readFileSync } from "node:fs";
import { isMap, isNode, isScalar, LineCounter, parseDocument } from "yaml";
import type { z } from "zod";
import { ConfigSchema, checkConfig, parseConfig, type SluiceConfig } from "../contract/config.js";
import { ErrorCode, SluiceError } from "../contract/errors.js";
import { compileRules } from "../pipeline/stages/rules-stage.js";

/** The config in `path`, or the built-in defaults when there is none. */
export function loadConfigFile(path: string | undefined): SluiceConfig {
  if (!path) return parseConfig({});
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (cause) {
    throw new SluiceError(ErrorCode.InvalidConfig, `cannot read config ${path}`, { cause });
  }
  return parseConfigText(text, path);
}

/** `text` (YAML or JSON) as a config; `name` is the file named in errors. */
export function parseConfigText(text: string, name: string): SluiceConfig {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
  const at = (offset: number): string => {
    const p = lines.linePos(offset);
    return `${name}:${p.line}:${p.col}`;
  };
  if (doc.errors.length > 0) {
    const msgs = doc.errors.map((e) => `${at(e.pos[0])}: ${e.message.split("\n")[0]}`);
    throw new SluiceError(ErrorCode.InvalidConfig, `config is not valid YAML or JSON:\n${msgs.join("\n")}`);
  }
  const raw: unknown = doc.toJS() ?? {};
  const checked = ConfigSchema.safeParse(raw);
  if (!checked.success) {
    const msgs = checked.error.issues.map((i) => {
      let node =
        doc.getIn(i.path as (string | number)[], true) ?? (i.path.length === 0 ? doc.contents : undefined);
      if (i.code === "unrecognized_keys" && isMap(node)) {
        // Point at the unknown key itself, not at the map holding it.
        node = node.items.find((pair) => isScalar(pair.key) && pair.key.value === i.keys[0])?.key ?? node;
      }
      // A missing field has no node: point at the nearest enclosing one that exists.
      let where = isNode(node) && node.range ? at(node.range[0]) : undefined;
      for (let n = i.path.length - 1; where === undefined && n >= 0; n--) {
        const parent = n === 0 ? doc.contents : doc.getIn(i.path.slice(0, n) as (string | number)[], true);
        if (isNode(parent) && parent.range) where = at(parent.range[0]);
      }
      return `${where ?? `${name}:1:1`}: ${fieldName(i.path)}: ${describeIssue(i)}`;
    });
    throw new SluiceError(ErrorCode.InvalidConfig, `invalid config:\n${msgs.join("\n")}`);
  }
  try {
    // The checks across fields (a pipeline named twice, a mode its sink cannot keep), and the
    // rules' regular expressions and CEL programs, compiled as the workers will.
    const cfg = checkConfig(checked.data);
    for (const p of cfg.pipelines) {
      try {
        compileRules(p.rules);
      } catch (err) {
        throw new SluiceError(ErrorCode.InvalidConfig, `pipeline '${p.name}': ${(err as Error).message}`);
      }
    }
    return cfg;
  } catch (err) {
    if (err instanceof SluiceError) {
      throw new SluiceError(err.code, `${name}: ${err.message}`, { cause: err });
    }
    throw err;
  }
}

/** `pipelines[0].shards` from `["pipelines", 0, "shards"]`; `(top level)` for the root. */
function fieldName(path: readonly PropertyKey[]): string {
  if (path.length === 0) return "(top level)";
  return path
    .map((p, i) => (typeof p === "number" ? `[${p}]` : `${i === 0 ? "" : "."}${String(p)}`))
    .join("");
}

function describeIssue(i: z.core.$ZodIssue): string {
  if (i.code === "unrecognized_keys")
    return `unknown field${i.keys.length > 1 ? "s" : ""} ${i.keys.join(", ")}`;
  return i.message;
}
