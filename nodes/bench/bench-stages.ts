/**
 * The stages the bench runs the worker path through: schema validation with three rules
 * (`ratios.schema_vs_plain`), and five normalise steps, an enrichment and dedupe
 * (`ratios.stages_vs_plain`, and the memory run).
 */
import type { NatsConnection } from "@nats-io/transport-node";
import {
  JetStreamReferenceTables,
  loadReferences,
  openReferenceBucket,
} from "../../shared/adapters/nats/reference-tables.js";
import { openSchemaRegistry } from "../../shared/adapters/nats/schema-store.js";
import { type PipelineConfig, parseConfig } from "../../shared/contract/config.js";
import { pipelineStages } from "../../shared/pipeline/pipeline-stages.js";
import type { Stage } from "../../shared/pipeline/stage.js";

/** The bench records' schema (`makeRecords`): every field required, no extra one. */
const BENCH_SCHEMA = {
  type: "object",
  properties: {
    id: { type: "string", minLength: 1 },
    key: { type: "string" },
    n: { type: "integer", minimum: 0 },
    at: { type: "integer" },
    body: { type: "string" },
  },
  required: ["id", "key", "n", "at", "body"],
  additionalProperties: false,
};

/**
 * The worker path's stages for `ratios.schema_vs_plain`: schema validation and three enforced
 * rules (a not-null, a pattern and a CEL expression), which every bench record passes.
 */
export async function benchStages(nc: NatsConnection, p: PipelineConfig): Promise<Stage[]> {
  const registry = await openSchemaRegistry(nc, p.replicas);
  await registry.register("bench", BENCH_SCHEMA);
  const withStages = parseConfig({
    pipelines: [
      {
        name: p.name,
        schema: { subject: "bench" },
        rules: [
          { name: "id_present", notNull: "id" },
          { name: "key_format", pattern: { field: "key", regex: "^k[0-9]+$" } },
          { name: "recent", expression: "record.at > 1600000000000 && record.n >= 0" },
        ],
      },
    ],
  }).pipelines[0]!;
  return pipelineStages(withStages, { schemas: registry, now: () => performance.now() });
}
/** The reference table the transform stages enrich from, keyed `k0`, `k1`, … like the bench's records. */
export const BENCH_TABLE = "bench_customers";

/**
 * Five normalise steps, an enrichment from `BENCH_TABLE` and dedupe by the record id within
 * `window` (every bench record is unique, so all are kept and the sink marks every one).
 */
export function transformStageConfig(window: string): unknown[] {
  return [
    {
      normalise: [
        { rename: { from: "body", to: "text" } },
        { trim: "id" },
        { lower: "key" },
        { cast: { field: "n", to: "number" } },
        { timestamp: { field: "at", to: "iso" } },
      ],
    },
    { enrich: { table: BENCH_TABLE, key: "key", into: "customer" } },
    { dedupe: { key: "id", window } },
  ];
}

/** Writes `entries` entries (`k0` … ) to `BENCH_TABLE`, creating its bucket. */
export async function loadBenchTable(nc: NatsConnection, replicas: number, entries: number): Promise<void> {
  const kv = await openReferenceBucket(nc, BENCH_TABLE, { replicas });
  const values = new Map<string, unknown>();
  for (let i = 0; i < entries; i++) values.set(`k${i}`, { name: `customer ${i}`, tier: i % 3 });
  await loadReferences(nc, kv!, BENCH_TABLE, values);
}

/**
 * The worker path's transform stages for `ratios.stages_vs_plain` (`transformStageConfig`), the
 * table of 1,024 entries on the cluster, cached from its KV watch as a worker does.
 */
export async function transformStages(
  nc: NatsConnection,
  p: PipelineConfig,
): Promise<{ stages: Stage[]; close(): Promise<void> }> {
  await loadBenchTable(nc, p.replicas, 1024);
  const references = new JetStreamReferenceTables(nc);
  const withStages = parseConfig({
    pipelines: [{ name: p.name, stages: transformStageConfig("1h") }],
  }).pipelines[0]!;
  return {
    stages: pipelineStages(withStages, { references, now: () => performance.now() }),
    close: () => references.close(),
  };
}
