import { describe, expect, it } from "vitest";
import {
  COMPATIBILITY_MODES,
  compatibilityProblems,
  type JsonSchema,
  resolveRecord,
} from "../../shared/core/schema-compat.js";
import { compileSchema } from "../../shared/pipeline/schema-registry.js";

const v1: JsonSchema = {
  type: "object",
  properties: { id: { type: "string" }, amount: { type: "number" } },
  required: ["id", "amount"],
};
/** v1 plus an optional field with a default. */
const withDefault: JsonSchema = {
  type: "object",
  properties: { ...(v1 as { properties: object }).properties, currency: { type: "string", default: "EUR" } },
  required: ["id", "amount", "currency"],
};
/** v1 plus a required field without a default. */
const withRequired: JsonSchema = {
  type: "object",
  properties: { ...(v1 as { properties: object }).properties, customer: { type: "string" } },
  required: ["id", "amount", "customer"],
};
const prev = (...schemas: JsonSchema[]) => schemas.map((schema, i) => ({ version: i + 1, schema }));

describe("schema compatibility (Confluent's modes, judged by resolution)", () => {
  it("adding a field with a default is compatible both ways, also when the old schema is open", () => {
    for (const mode of COMPATIBILITY_MODES)
      expect(compatibilityProblems(mode, withDefault, prev(v1))).toEqual([]);
    const open = { ...(v1 as object), additionalProperties: true };
    expect(compatibilityProblems("FULL_TRANSITIVE", withDefault, prev(open))).toEqual([]);
  });

  it("a new required field without a default breaks BACKWARD, naming the field and the version", () => {
    expect(compatibilityProblems("BACKWARD", withRequired, prev(v1, v1))).toEqual([
      'field "customer": required in the new schema, absent from version 2',
    ]);
    // Old readers drop the new field: forward compatible.
    expect(compatibilityProblems("FORWARD", withRequired, prev(v1))).toEqual([]);
    expect(compatibilityProblems("FULL", withRequired, prev(v1))).toHaveLength(1);
    expect(compatibilityProblems("NONE", withRequired, prev(v1))).toEqual([]);
  });

  it("removing a required field breaks FORWARD: old readers need it", () => {
    const removed: JsonSchema = { type: "object", properties: { id: { type: "string" } }, required: ["id"] };
    expect(compatibilityProblems("BACKWARD", removed, prev(v1))).toEqual([]);
    expect(compatibilityProblems("FORWARD", removed, prev(v1))).toEqual([
      'field "amount": required in version 1, absent from the new schema',
    ]);
  });

  it("types are never coerced: number to string breaks, integer widens to number only", () => {
    const asString: JsonSchema = {
      type: "object",
      properties: { id: { type: "string" }, amount: { type: "string" } },
      required: ["id", "amount"],
    };
    expect(compatibilityProblems("BACKWARD", asString, prev(v1))).toEqual([
      'field "amount": version 1 writes number, the new schema accepts only string',
    ]);
    const int: JsonSchema = { type: "object", properties: { n: { type: "integer" } } };
    const num: JsonSchema = { type: "object", properties: { n: { type: "number" } } };
    expect(compatibilityProblems("BACKWARD", num, prev(int))).toEqual([]);
    expect(compatibilityProblems("BACKWARD", int, prev(num))).toEqual([
      'field "n": version 1 writes number, the new schema accepts only integer',
    ]);
  });

  it("transitive modes check every earlier version, the others only the latest", () => {
    const a: JsonSchema = { type: "object", properties: { x: { type: "string" } }, required: ["x"] };
    const b: JsonSchema = { type: "object", properties: { x: { type: "string", default: "" } } };
    const c: JsonSchema = { type: "object", properties: { x: { type: "string" } } };
    // c reads b's data; a reader on c of a's data is fine too: nothing is required.
    expect(compatibilityProblems("FORWARD", c, prev(a, b))).toEqual([]);
    expect(compatibilityProblems("FORWARD_TRANSITIVE", c, prev(a, b))).toEqual([
      'field "x": required in version 1, optional in the new schema and without a default',
    ]);
  });

  it("nested objects, enums and array items are compared too", () => {
    const w: JsonSchema = {
      type: "object",
      properties: {
        addr: { type: "object", properties: { zip: { type: "string" } } },
        tier: { enum: ["gold", "silver"] },
        tags: { type: "array", items: { type: "string" } },
      },
    };
    const r: JsonSchema = {
      type: "object",
      properties: {
        addr: { type: "object", properties: { zip: { type: "integer" } } },
        tier: { enum: ["gold"] },
        tags: { type: "array", items: { type: "number" } },
      },
    };
    expect(compatibilityProblems("BACKWARD", r, prev(w))).toEqual([
      'field "addr.zip": version 1 writes string, the new schema accepts only integer',
      'field "tier": version 1 allows "silver", the new schema does not',
      'field "tags[]": version 1 writes string, the new schema accepts only number',
    ]);
  });

  it("resolution drops unknown fields and fills defaults, recursively, without touching the input", () => {
    const record = { id: "a", amount: 3, extra: true, nested: { keep: 1, drop: 2 } };
    const reader: JsonSchema = {
      type: "object",
      properties: {
        id: {},
        amount: {},
        currency: { default: "EUR" },
        nested: { type: "object", properties: { keep: {}, added: { default: [1] } } },
      },
    };
    expect(resolveRecord(record, reader)).toEqual({
      id: "a",
      amount: 3,
      currency: "EUR",
      nested: { keep: 1, added: [1] },
    });
    expect(record).toEqual({ id: "a", amount: 3, extra: true, nested: { keep: 1, drop: 2 } });
    // The resolved record is valid under the reader: this is what BACKWARD promises.
    const validate = compileSchema(withDefault);
    expect(validate(resolveRecord({ id: "x", amount: 1 }, withDefault))).toBe(true);
    expect(validate({ id: "x", amount: "12", currency: "EUR" })).toBe(false);
  });

  it("refuses what is not a JSON Schema", () => {
    expect(() => compileSchema([1])).toThrow(/JSON Schema object/);
    expect(() => compileSchema({ type: "nosuchtype" })).toThrow(/not a valid JSON Schema/);
  });

  /**
   * Confluent's summary table of compatibility types ("Changes allowed"): BACKWARD allows
   * deleting fields and adding optional fields; FORWARD allows adding fields and deleting
   * optional fields; FULL allows adding and deleting optional fields; NONE allows everything;
   * each transitive form allows the same against every earlier version.
   */
  describe("Confluent's table of allowed changes", () => {
    const base: JsonSchema = {
      type: "object",
      properties: { id: { type: "string" }, amount: { type: "number" }, note: { type: "string" } },
      required: ["id", "amount"],
    };
    const change = (props: object, required: string[]): JsonSchema => ({
      type: "object",
      properties: props,
      required,
    });
    const { id, amount, note } = (base as { properties: Record<string, object> }).properties;
    const changes: Record<string, JsonSchema> = {
      "delete a required field": change({ id, note }, ["id"]),
      "delete an optional field": change({ id, amount }, ["id", "amount"]),
      "add a required field": change({ id, amount, note, customer: { type: "string" } }, [
        "id",
        "amount",
        "customer",
      ]),
      "add an optional field": change({ id, amount, note, channel: { type: "string" } }, ["id", "amount"]),
      "add a field with a default": change(
        { id, amount, note, currency: { type: "string", default: "EUR" } },
        ["id", "amount", "currency"],
      ),
    };
    const allowed: Record<string, string[]> = {
      NONE: Object.keys(changes),
      BACKWARD: [
        "delete a required field",
        "delete an optional field",
        "add an optional field",
        "add a field with a default",
      ],
      FORWARD: [
        "delete an optional field",
        "add a required field",
        "add an optional field",
        "add a field with a default",
      ],
      FULL: ["delete an optional field", "add an optional field", "add a field with a default"],
    };
    for (const [mode, ok] of Object.entries(allowed)) {
      for (const m of mode === "NONE" ? [mode] : [mode, `${mode}_TRANSITIVE`]) {
        for (const [name, schema] of Object.entries(changes)) {
          const verdict = ok.includes(name) ? "allows" : "refuses";
          it(`${m} ${verdict}: ${name}`, () => {
            const problems = compatibilityProblems(
              m as (typeof COMPATIBILITY_MODES)[number],
              schema,
              prev(base, base),
            );
            if (ok.includes(name)) expect(problems).toEqual([]);
            else expect(problems.length).toBeGreaterThan(0);
          });
        }
      }
    }
  });
});
