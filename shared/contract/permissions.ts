/**
 * Least privilege on NATS (README "Security"): one account for sluice, one user per role, each
 * allowed exactly the subjects its part of the wire contract uses. Every subject here comes from
 * `wire.ts`, the same constants the nodes publish and subscribe with, so the permissions cannot
 * drift from the protocol. Each role has an inbox prefix of its own: a role allowed to subscribe
 * to `_INBOX.>` could read every other role's replies (a PubAck, a lease check, a commit reply).
 *
 * The server's rules: permissions apply to a subject after the account's mappings (a producer of
 * a per-shard pipeline must be allowed the mapped subjects too); no partial-token wildcards
 * (`KV_sluice_*` matches nothing), so every bucket and stream is named; acks go to
 * `$JS.ACK.<stream>.…` or, with the server's v2 ack subjects, `$JS.ACK.<domain>.<hash>.<stream>.…`.
 */
import { type PipelineConfig, type SluiceConfig, sinkOf } from "./config.js";
import {
  AUDIT_STREAM,
  AUDIT_SUBJECTS,
  auditKindSubjects,
  Buckets,
  ControlSubjects,
  deadLetterStream,
  deadLetterSubjects,
  ingestSubjects,
  inputStreams,
  outputStream,
  outputSubjects,
  refBucket,
  SinkSubjects,
  streamLeaderElected,
} from "./wire.js";

export const Roles = ["producer", "worker", "coordinator", "sink", "admin", "reader"] as const;
export type Role = (typeof Roles)[number];

/** What one user may do: the subjects it may publish and subscribe to. */
export interface RolePermissions {
  publish: string[];
  subscribe: string[];
  /** May answer requests sent to the subjects it subscribes to (services: coordinator, sink). */
  allowResponses: boolean;
}

/** The inbox prefix of a role: the only replies it can receive. */
export const inboxPrefixOf = (role: Role): string => `_INBOX_${role}`;

/** The role's credentials, as `D/credentials/<role>.json` holds them. */
export interface RoleCredentials {
  user: string;
  password: string;
  inboxPrefix: string;
}

const JS_API = "$JS.API";

/** Reading a stream's messages through a consumer of one's own: create, pull, ack, delete. */
function consumeStream(stream: string): string[] {
  return [
    `${JS_API}.STREAM.INFO.${stream}`,
    `${JS_API}.STREAM.MSG.GET.${stream}`,
    `${JS_API}.DIRECT.GET.${stream}`,
    `${JS_API}.DIRECT.GET.${stream}.>`,
    `${JS_API}.CONSUMER.CREATE.${stream}`,
    `${JS_API}.CONSUMER.CREATE.${stream}.>`,
    `${JS_API}.CONSUMER.DURABLE.CREATE.${stream}.>`,
    `${JS_API}.CONSUMER.DELETE.${stream}.>`,
    `${JS_API}.CONSUMER.INFO.${stream}.>`,
    `${JS_API}.CONSUMER.MSG.NEXT.${stream}.>`,
    `${JS_API}.CONSUMER.NAMES.${stream}`,
    `${JS_API}.CONSUMER.RESET.${stream}.>`,
    `$JS.ACK.${stream}.>`,
    `$JS.ACK.*.*.${stream}.>`,
    `$JS.FC.${stream}.>`,
  ];
}

/** Watching a stream's consumers (their lag): what `status` and the dashboard show. */
const inspectStream = (stream: string): string[] => [
  `${JS_API}.STREAM.INFO.${stream}`,
  `${JS_API}.CONSUMER.NAMES.${stream}`,
  `${JS_API}.CONSUMER.INFO.${stream}.>`,
];

/** Output streams the pipelines commit to: their checkpoints and records are the sink's state. */
const outputStreamsOf = (cfg: SluiceConfig): string[] =>
  cfg.pipelines.filter((p) => sinkOf(cfg, p).type === "jetstream").map((p) => outputStream(p.name));

/** Reading a KV bucket (gets and watches) without writing it. */
const readBucket = (bucket: string): string[] => consumeStream(`KV_${bucket}`);

/** Reading and writing a KV bucket. */
const writeBucket = (bucket: string): string[] => [...readBucket(bucket), `$KV.${bucket}.>`];

/** Reference tables the pipelines enrich from (README "Enrichment"). */
function refTables(cfg: SluiceConfig): string[] {
  const tables = new Set<string>();
  for (const p of cfg.pipelines) for (const s of p.stages) if ("enrich" in s) tables.add(s.enrich.table);
  return [...tables].sort();
}

/** Subjects a producer publishes a pipeline's records to (and, per shard, as they are mapped). */
function ingestOf(p: PipelineConfig): string[] {
  return p.streams === "per-shard"
    ? [ingestSubjects(p.name), `sluice.in.${p.name}.*.*`]
    : [ingestSubjects(p.name)];
}

const sorted = (subjects: Iterable<string>): string[] => [...new Set(subjects)].sort();

/** The permissions of `role` over the pipelines of `cfg`. */
export function rolePermissions(role: Role, cfg: SluiceConfig): RolePermissions {
  const inbox = `${inboxPrefixOf(role)}.>`;
  const inputs = cfg.pipelines.flatMap((p) => [...inputStreams(p).keys()]);
  switch (role) {
    case "producer":
      return {
        publish: sorted(cfg.pipelines.flatMap(ingestOf)),
        subscribe: [inbox],
        allowResponses: false,
      };
    case "worker": {
      const publish = [
        `${JS_API}.INFO`,
        ...inputs.flatMap(consumeStream),
        ...cfg.pipelines.flatMap((p) => [
          deadLetterSubjects(p.name),
          `${JS_API}.STREAM.INFO.${deadLetterStream(p.name)}`,
          ...(sinkOf(cfg, p).type === "jetstream"
            ? [outputSubjects(p.name), ...consumeStream(outputStream(p.name))]
            : []),
        ]),
        ...readBucket(Buckets.assignments),
        ...readBucket(Buckets.coordinator),
        ...readBucket(Buckets.schemas),
        ...refTables(cfg).flatMap((t) => readBucket(refBucket(t))),
        ControlSubjects.heartbeat,
        ControlSubjects.released,
        SinkSubjects.fence,
        SinkSubjects.commit,
        SinkSubjects.checkpoint,
        SinkSubjects.recordIds,
        // Its fences, into the audit stream (README "Security").
        auditKindSubjects("fence"),
      ];
      return {
        publish: sorted(publish),
        // Leader advisories of every stream: the server allows no narrower subscription to them.
        subscribe: [inbox, ControlSubjects.assigned, ControlSubjects.released, streamLeaderElected("*")],
        allowResponses: false,
      };
    }
    case "coordinator": {
      const publish = [
        `${JS_API}.INFO`,
        ...inputs.flatMap(inspectStream),
        ...cfg.pipelines.map((p) => `${JS_API}.STREAM.INFO.${deadLetterStream(p.name)}`),
        ...outputStreamsOf(cfg).flatMap(consumeStream),
        ...writeBucket(Buckets.assignments),
        ...writeBucket(Buckets.coordinator),
        ControlSubjects.assigned,
        // The dashboard's reads of the sink.
        `sluice.sink.inspect.>`,
      ];
      return {
        publish: sorted(publish),
        subscribe: [inbox, ControlSubjects.heartbeat, ControlSubjects.released],
        allowResponses: true,
      };
    }
    case "sink":
      return { publish: [], subscribe: [inbox, "sluice.sink.>"], allowResponses: true };
    case "reader": {
      const publish = [
        `${JS_API}.INFO`,
        ...inputs.flatMap(inspectStream),
        ...cfg.pipelines.map((p) => `${JS_API}.STREAM.INFO.${deadLetterStream(p.name)}`),
        ...outputStreamsOf(cfg).flatMap(consumeStream),
        ...readBucket(Buckets.assignments),
        ...readBucket(Buckets.coordinator),
        `sluice.sink.inspect.>`,
        // `sluice audit`.
        ...consumeStream(AUDIT_STREAM),
      ];
      return { publish: sorted(publish), subscribe: [inbox], allowResponses: false };
    }
    case "admin":
      return {
        // The ingest subjects: `sluice dlq replay` publishes dead letters back into a pipeline.
        publish: [
          `${JS_API}.>`,
          "$KV.>",
          "$JS.ACK.>",
          "$JS.FC.>",
          // Its commands' entries in the audit stream (config, schema and reference changes).
          AUDIT_SUBJECTS,
          ...sorted(cfg.pipelines.flatMap(ingestOf)),
        ],
        subscribe: [inbox],
        allowResponses: false,
      };
  }
}

const quote = (s: string): string => JSON.stringify(s);
const list = (subjects: readonly string[]): string => `[${subjects.map(quote).join(", ")}]`;

/**
 * The `accounts` block of a NATS server config: account `SLUICE` with JetStream, one user per
 * role with its permissions, and the pipelines' partition mappings. `passwords` may hold bcrypt
 * hashes (`$2a$…`), which the server accepts in place of the password.
 */
export function natsAccountsBlock(
  cfg: SluiceConfig,
  passwords: Readonly<Record<Role, string>>,
  mappings: ReadonlyArray<readonly [string, string]> = [],
): string {
  const users = Roles.map((role) => {
    const p = rolePermissions(role, cfg);
    const responses = p.allowResponses ? ", allow_responses: true" : "";
    return `      { user: ${quote(role)}, password: ${quote(passwords[role])}, permissions: {
          publish: { allow: ${list(p.publish)} },
          subscribe: { allow: ${list(p.subscribe)} }${responses}
        } }`;
  }).join(",\n");
  const maps = mappings.map(([from, to]) => `      ${quote(from)}: ${quote(to)}`).join("\n");
  return `accounts {
  SLUICE {
    jetstream: enabled
    users: [
${users}
    ]
    mappings = {
${maps}
    }
  }
}
`;
}
