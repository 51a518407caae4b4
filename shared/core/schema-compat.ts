/**
 * Compatibility of JSON Schemas in a registry subject, with Confluent's modes and meanings,
 * judged by resolution: a reader reads a writer's record after the record's unknown fields are
 * dropped and its missing optional fields are filled from the reader's `default`. So adding an
 * optional field with a default is compatible both ways, whether or not the old schema allows
 * additional properties, and removing a field the reader does not require is too.
 *
 * What is compared: `type` (an `integer` writer is readable as `number`, never the reverse;
 * nothing is coerced), `properties` and `required` (recursively), `enum`, and array `items`.
 * Other keywords (bounds, patterns, formats) are checked when a record is validated, not here.
 */

export const COMPATIBILITY_MODES = [
  "NONE",
  "BACKWARD",
  "BACKWARD_TRANSITIVE",
  "FORWARD",
  "FORWARD_TRANSITIVE",
  "FULL",
  "FULL_TRANSITIVE",
] as const;
export type CompatibilityMode = (typeof COMPATIBILITY_MODES)[number];
export const DEFAULT_COMPATIBILITY: CompatibilityMode = "BACKWARD";

export function isCompatibilityMode(s: string): s is CompatibilityMode {
  return (COMPATIBILITY_MODES as readonly string[]).includes(s);
}

/** A JSON Schema as stored: an object, or `true`/`false`. */
export type JsonSchema = boolean | { [k: string]: unknown };

/** One registered version, as the judgement needs it. */
export interface SchemaVersion {
  version: number;
  schema: JsonSchema;
}

/**
 * Why `candidate` may not be registered after `previous` (oldest first) under `mode`; empty when
 * it may. Each problem names the field and both sides, e.g. `field "customer": required in the
 * new schema, absent from version 2`.
 */
export function compatibilityProblems(
  mode: CompatibilityMode,
  candidate: JsonSchema,
  previous: readonly SchemaVersion[],
): string[] {
  if (mode === "NONE" || previous.length === 0) return [];
  const against = mode.endsWith("_TRANSITIVE") ? previous : previous.slice(-1);
  const backward = mode.startsWith("BACKWARD") || mode.startsWith("FULL");
  const forward = mode.startsWith("FORWARD") || mode.startsWith("FULL");
  const out: string[] = [];
  for (const p of against) {
    const name = `version ${p.version}`;
    // Backward: consumers on the new schema read data written with the old one.
    if (backward) readable(candidate, p.schema, "the new schema", name, "", out);
    // Forward: consumers still on the old schema read data written with the new one.
    if (forward) readable(p.schema, candidate, name, "the new schema", "", out);
  }
  return [...new Set(out)];
}

type Obj = { [k: string]: unknown };
const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);

/** The types a schema admits, or null for any. */
function typesOf(s: Obj): Set<string> | null {
  const t = s.type;
  if (typeof t === "string") return new Set([t]);
  if (Array.isArray(t)) return new Set(t.filter((x): x is string => typeof x === "string"));
  return null;
}

const fieldLabel = (path: string): string => (path === "" ? "the record" : `field "${path}"`);
const join = (path: string, key: string): string => (path === "" ? key : `${path}.${key}`);

/** Adds to `out` why a reader with schema `r` cannot read what a writer with schema `w` wrote. */
function readable(
  r: JsonSchema,
  w: JsonSchema,
  rName: string,
  wName: string,
  path: string,
  out: string[],
): void {
  if (r === true || w === false) return;
  if (r === false) {
    out.push(`${fieldLabel(path)}: ${rName} accepts nothing, ${wName} accepts values`);
    return;
  }
  const ws: Obj = w === true ? {} : w;
  const rt = typesOf(r);
  const wt = typesOf(ws);
  if (rt !== null) {
    if (wt === null) {
      out.push(`${fieldLabel(path)}: ${rName} accepts only ${[...rt].join(" or ")}, ${wName} any type`);
      return;
    }
    const unreadable = [...wt].filter((t) => !rt.has(t) && !(t === "integer" && rt.has("number")));
    if (unreadable.length > 0) {
      out.push(
        `${fieldLabel(path)}: ${wName} writes ${unreadable.join(" or ")}, ${rName} accepts only ${[...rt].join(" or ")}`,
      );
      return;
    }
  }
  if (Array.isArray(r.enum)) {
    const allowed = r.enum.map((v) => JSON.stringify(v));
    if (!Array.isArray(ws.enum)) {
      out.push(`${fieldLabel(path)}: ${rName} allows only ${allowed.join(", ")}, ${wName} any value`);
    } else {
      const extra = ws.enum.map((v) => JSON.stringify(v)).filter((v) => !allowed.includes(v));
      if (extra.length > 0)
        out.push(`${fieldLabel(path)}: ${wName} allows ${extra.join(", ")}, ${rName} does not`);
    }
  }
  const rProps = isObj(r.properties) ? r.properties : {};
  const wProps = isObj(ws.properties) ? ws.properties : {};
  const rRequired = Array.isArray(r.required) ? r.required : [];
  const wRequired = Array.isArray(ws.required) ? ws.required : [];
  for (const [key, rp] of Object.entries(rProps)) {
    const f = join(path, key);
    const inWriter = Object.hasOwn(wProps, key);
    if (rRequired.includes(key) && !wRequired.includes(key) && !(isObj(rp) && "default" in rp)) {
      out.push(
        `field "${f}": required in ${rName}, ${inWriter ? `optional in ${wName} and without a default` : `absent from ${wName}`}`,
      );
    }
    if (inWriter) readable(rp as JsonSchema, wProps[key] as JsonSchema, rName, wName, f, out);
  }
  if (
    (isObj(r.items) || typeof r.items === "boolean") &&
    (isObj(ws.items) || typeof ws.items === "boolean")
  ) {
    readable(r.items as JsonSchema, ws.items as JsonSchema, rName, wName, `${path}[]`, out);
  }
}

/**
 * A writer's record resolved to a reader's schema: fields the reader does not declare are
 * dropped (when it declares any), and missing ones that have a `default` are filled, recursively
 * through nested objects. The input is not changed.
 */
export function resolveRecord(value: unknown, reader: JsonSchema): unknown {
  if (!isObj(reader) || !isObj(value)) return value;
  const props = isObj(reader.properties) ? reader.properties : null;
  if (props === null) return value;
  const out: Obj = {};
  for (const [key, p] of Object.entries(props)) {
    if (Object.hasOwn(value, key)) out[key] = resolveRecord(value[key], p as JsonSchema);
    else if (isObj(p) && "default" in p) out[key] = structuredClone(p.default);
  }
  return out;
}
