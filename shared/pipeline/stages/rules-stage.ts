/**
 * Quality rules beyond the schema (README "Quality rules"): field not null, a number within a
 * range, a string matching a pattern, two fields compared, or a CEL expression over the record.
 * Each rule has a mode: `off`; `shadow`, where a failure is counted and reported but the record
 * kept; `enforce`, where it is rejected with `RULE_FAILED` and the rule's name. `canary: P`
 * enforces on P % of keys and shadows on the rest, chosen by a hash of the rule's name and the
 * record's key, so a redelivery, or the key's next record, falls on the same side.
 *
 * Every check is compiled once per config (regular expressions, CEL programs) and depends only
 * on the record: no clock, no randomness, so a redelivery is decided as before.
 */
import { Environment } from "@marcbachmann/cel-js";
import type { RuleConfig } from "../../contract/config.js";
import { ErrorCode, SluiceError } from "../../contract/errors.js";
import type { RuleCounts } from "../../contract/ownership.js";
import { fnv1a32 } from "../../contract/wire.js";
import { keep, type PipelineRecord, reject, type Stage, type StageDecision } from "../stage.js";

/** A batch's rule outcomes, by rule name, with one example of a shadowed failure per rule. */
export interface RulesReport {
  pipeline: string;
  counts: Record<string, RuleCounts>;
  /** Rule name -> the first shadowed failure of the batch. */
  shadowExamples: Record<string, { recordId: string; detail: string }>;
}

/** A check: null when the record passes, else why it fails. */
type Check = (value: Record<string, unknown>, key: string) => string | null;

interface CompiledRule {
  name: string;
  mode: "shadow" | "enforce";
  /** Share of keys enforced, in 1/10 000 (10 000: every key); only with `canary`. */
  canaryBasisPoints: number | null;
  check: Check;
}

/** Reads a dotted path through own properties only (a record's `constructor` is not Object's). */
export function getter(path: string): (v: Record<string, unknown>) => unknown {
  const parts = path.split(".");
  return (v) => {
    let cur: unknown = v;
    for (const p of parts) {
      if (typeof cur !== "object" || cur === null || !Object.hasOwn(cur, p)) return undefined;
      cur = (cur as Record<string, unknown>)[p];
    }
    return cur;
  };
}

const show = (v: unknown): string => {
  if (typeof v === "string") return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === "bigint") return `${v}`;
  if (v === undefined) return "absent";
  try {
    const s = JSON.stringify(v);
    return s === undefined ? String(v) : s.length > 40 ? `${s.slice(0, 40)}…` : s;
  } catch {
    return typeof v;
  }
};

const isNum = (v: unknown): v is number | bigint =>
  (typeof v === "number" && !Number.isNaN(v)) || typeof v === "bigint";

/** Equal values, a number and a bigint included (3 and 3n are equal; 3.5 and any bigint are not). */
function same(a: number | bigint | string, b: number | bigint | string): boolean {
  if (typeof a === typeof b) return a === b;
  if (typeof a === "string" || typeof b === "string") return false;
  const [n, big] = typeof a === "number" ? [a, b as bigint] : [b as number, a as bigint];
  return Number.isInteger(n) && BigInt(n) === big;
}

const COMPARE: Record<string, (a: number | bigint | string, b: number | bigint | string) => boolean> = {
  "<": (a, b) => a < b,
  "<=": (a, b) => a <= b,
  "==": same,
  "!=": (a, b) => !same(a, b),
  ">=": (a, b) => a >= b,
  ">": (a, b) => a > b,
};

/**
 * The CEL environment of expressions: `record` (the value, a map) and `key` (a string). Shared
 * with the normalise stage's `set` steps, so both read a record alike.
 */
export function celEnvironment(): Environment {
  return new Environment({ unlistedVariablesAreDyn: false })
    .registerVariable("record", "dyn")
    .registerVariable("key", "string");
}

/** Compiles one rule's check; throws `INVALID_CONFIG` naming the rule when it cannot. */
export function compileCheck(rule: RuleConfig, env: Environment = celEnvironment()): Check {
  const fail = (why: string): never => {
    throw new SluiceError(ErrorCode.InvalidConfig, `rule '${rule.name}': ${why}`);
  };
  if (rule.notNull !== undefined) {
    const get = getter(rule.notNull);
    const field = rule.notNull;
    return (v) => {
      const x = get(v);
      return x === undefined || x === null ? `${field} is ${x === null ? "null" : "absent"}` : null;
    };
  }
  if (rule.range !== undefined) {
    const { field, min, max } = rule.range;
    const get = getter(field);
    const bounds = `[${min ?? "-∞"}, ${max ?? "∞"}]`;
    return (v) => {
      const x = get(v);
      if (!isNum(x)) return `${field} is ${show(x)}, not a number`;
      return (min !== undefined && x < min) || (max !== undefined && x > max)
        ? `${field} is ${show(x)}, not within ${bounds}`
        : null;
    };
  }
  if (rule.pattern !== undefined) {
    const { field, regex } = rule.pattern;
    let re: RegExp;
    try {
      re = new RegExp(regex, "u");
    } catch (err) {
      return fail(`pattern ${JSON.stringify(regex)} is not a regular expression: ${(err as Error).message}`);
    }
    const get = getter(field);
    return (v) => {
      const x = get(v);
      if (typeof x !== "string") return `${field} is ${show(x)}, not a string`;
      return re.test(x) ? null : `${field} ${show(x)} does not match /${regex}/`;
    };
  }
  if (rule.compare !== undefined) {
    const { left, op, right } = rule.compare;
    const l = getter(left);
    const r = getter(right);
    const cmp = COMPARE[op]!;
    return (v) => {
      const a = l(v);
      const b = r(v);
      const comparable = (isNum(a) && isNum(b)) || (typeof a === "string" && typeof b === "string");
      if (!comparable)
        return `${left} (${show(a)}) and ${right} (${show(b)}) are not two numbers or two strings`;
      return cmp(a as number | string, b as number | string)
        ? null
        : `${left} ${show(a)} ${op} ${right} ${show(b)} is false`;
    };
  }
  const source = rule.expression!;
  let program: ReturnType<Environment["parse"]>;
  try {
    program = env.parse(source);
  } catch (err) {
    return fail(`expression does not parse: ${firstLine(err)}`);
  }
  return (v, key) => {
    let out: unknown;
    try {
      out = program({ record: v, key });
    } catch (err) {
      // A record with an own `constructor` key fails in cel-js (see `constructorKeysAsMaps`):
      // evaluated again with such objects as Maps, only after a failure, so others pay nothing.
      try {
        const asMaps = constructorKeysAsMaps(v);
        if (asMaps === v) return `expression failed: ${firstLine(err)}`;
        out = program({ record: asMaps, key });
      } catch (again) {
        return `expression failed: ${firstLine(again)}`;
      }
    }
    return out === true ? null : `expression is ${show(out)}, not true`;
  };
}

const firstLine = (err: unknown): string => String((err as Error).message ?? err).split("\n")[0]!;

/**
 * `v` with every plain object that has an own `constructor` key turned into a Map of its
 * entries; `v` itself when it has none. cel-js types a JS object by its `constructor`
 * property, which such a key shadows: the record fails every expression ("Unsupported type").
 * A Map is the same CEL map. Recursive: a value too deep throws RangeError, caught by the caller.
 */
export function constructorKeysAsMaps(v: unknown): unknown {
  if (typeof v !== "object" || v === null) return v;
  if (Array.isArray(v)) {
    const out = v.map(constructorKeysAsMaps);
    return out.some((y, i) => y !== v[i]) ? out : v;
  }
  if (v instanceof Map) {
    let changed = false;
    const entries = [...v].map(([k, x]): [unknown, unknown] => {
      const y = constructorKeysAsMaps(x);
      changed ||= y !== x;
      return [k, y];
    });
    return changed ? new Map(entries) : v;
  }
  const proto: unknown = Object.getPrototypeOf(v);
  if (proto !== Object.prototype && proto !== null) return v;
  const shadowed = Object.hasOwn(v, "constructor");
  let changed = shadowed;
  const entries = Object.entries(v).map(([k, x]): [string, unknown] => {
    const y = constructorKeysAsMaps(x);
    changed ||= y !== x;
    return [k, y];
  });
  if (!changed) return v;
  return shadowed ? new Map(entries) : Object.fromEntries(entries);
}

/** The rules of a pipeline, compiled; `off` rules are left out. Throws on a rule that cannot compile. */
export function compileRules(rules: readonly RuleConfig[]): CompiledRule[] {
  const env = celEnvironment();
  return rules
    .filter((r) => r.mode !== "off")
    .map((r) => ({
      name: r.name,
      mode: r.mode as "shadow" | "enforce",
      canaryBasisPoints: r.canary === undefined ? null : Math.round(r.canary * 100),
      check: compileCheck(r, env),
    }));
}

/** Whether `key` falls in the enforced share of a canary rule: a fixed hash, never a draw. */
export const inCanary = (rule: string, key: string, basisPoints: number): boolean =>
  fnv1a32(`${rule}\u0000${key}`) % 10_000 < basisPoints;

export class RulesStage implements Stage {
  readonly name = "rules";
  private readonly rules: CompiledRule[];

  constructor(
    private readonly pipeline: string,
    rules: readonly RuleConfig[],
    private readonly report?: (r: RulesReport) => void,
  ) {
    this.rules = compileRules(rules);
  }

  process(batch: readonly PipelineRecord[]): StageDecision<PipelineRecord>[] {
    const counts: Record<string, RuleCounts> = {};
    const examples: RulesReport["shadowExamples"] = {};
    for (const rule of this.rules) counts[rule.name] = { checked: 0, rejected: 0, shadowed: 0 };
    const out = batch.map((r) => {
      for (const rule of this.rules) {
        const c = counts[rule.name]!;
        c.checked++;
        const why = rule.check(r.value, r.key);
        if (why === null) continue;
        const enforced =
          rule.mode === "enforce" &&
          (rule.canaryBasisPoints === null || inCanary(rule.name, r.key, rule.canaryBasisPoints));
        if (enforced) {
          c.rejected++;
          return reject<PipelineRecord>({
            ok: false,
            code: ErrorCode.RuleFailed,
            message: `rule "${rule.name}": ${why}`,
          });
        }
        c.shadowed++;
        examples[rule.name] ??= { recordId: r.recordId, detail: why };
      }
      return keep(r);
    });
    if (this.rules.length > 0) this.report?.({ pipeline: this.pipeline, counts, shadowExamples: examples });
    return out;
  }
}
