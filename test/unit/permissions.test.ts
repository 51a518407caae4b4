import { describe, expect, it } from "vitest";
import { parseConfig } from "../../shared/contract/config.js";
import {
  inboxPrefixOf,
  natsAccountsBlock,
  type Role,
  Roles,
  rolePermissions,
} from "../../shared/contract/permissions.js";
import {
  AUDIT_STREAM,
  AUDIT_SUBJECTS,
  auditKindSubjects,
  Buckets,
  ControlSubjects,
  ingestSubjects,
  refBucket,
  SinkSubjects,
} from "../../shared/contract/wire.js";

const cfg = parseConfig({
  pipelines: [
    { name: "orders", shards: 4 },
    { name: "clicks", shards: 4, streams: "per-shard", sink: { type: "jetstream" } },
    {
      name: "enriched",
      shards: 2,
      stages: [{ enrich: { table: "countries", key: "country", into: "country_info" } }],
    },
  ],
});

const all = (role: Role): string[] => {
  const p = rolePermissions(role, cfg);
  return [...p.publish, ...p.subscribe];
};

describe("permissions per role, generated from the wire contract", () => {
  it("lets the producer publish its pipelines' input subjects (and the mapped ones of a per-shard pipeline) only", () => {
    const p = rolePermissions("producer", cfg);
    expect(p.publish).toEqual(
      [
        ingestSubjects("orders"),
        ingestSubjects("clicks"),
        "sluice.in.clicks.*.*",
        ingestSubjects("enriched"),
      ].sort(),
    );
    expect(p.subscribe).toEqual([`${inboxPrefixOf("producer")}.>`]);
    expect(p.allowResponses).toBe(false);
  });

  it("gives every role an inbox of its own, and none the shared _INBOX", () => {
    const prefixes = Roles.map(inboxPrefixOf);
    expect(new Set(prefixes).size).toBe(Roles.length);
    for (const role of Roles) {
      expect(rolePermissions(role, cfg).subscribe).toContain(`${inboxPrefixOf(role)}.>`);
      expect(all(role).filter((s) => s.startsWith("_INBOX.") || s === ">")).toEqual([]);
    }
  });

  it("uses whole-token wildcards only (the server matches no partial token)", () => {
    for (const role of Roles) {
      const partial = all(role).filter((s) =>
        s.split(".").some((t) => (t.includes("*") || t.includes(">")) && t !== "*" && t !== ">"),
      );
      expect(partial).toEqual([]);
    }
  });

  it("keeps the assignments' writes with the coordinator and the sink's requests with the worker", () => {
    const kvWrite = `$KV.${Buckets.assignments}.>`;
    expect(rolePermissions("coordinator", cfg).publish).toContain(kvWrite);
    for (const role of ["worker", "reader", "producer", "sink"] as const)
      expect(rolePermissions(role, cfg).publish).not.toContain(kvWrite);
    expect(rolePermissions("worker", cfg).publish).toEqual(
      expect.arrayContaining([SinkSubjects.commit, SinkSubjects.fence]),
    );
    expect(rolePermissions("reader", cfg).publish).not.toContain(SinkSubjects.commit);
    expect(rolePermissions("coordinator", cfg).subscribe).toContain(ControlSubjects.heartbeat);
    expect(rolePermissions("sink", cfg).publish).toEqual([]);
  });

  it("names the worker's reference tables and output streams from the config", () => {
    const w = rolePermissions("worker", cfg).publish;
    expect(w).toContain(`$JS.API.STREAM.INFO.KV_${refBucket("countries")}`);
    expect(w).toContain("sluice.out.clicks.>");
    expect(w).not.toContain("sluice.out.orders.>");
    expect(w).toContain("$JS.API.CONSUMER.MSG.NEXT.SLUICE_IN_clicks_3.>");
  });

  it("lets workers append their fences to the audit stream, the admin every entry, and the reader read it", () => {
    expect(rolePermissions("worker", cfg).publish).toContain(auditKindSubjects("fence"));
    expect(rolePermissions("worker", cfg).publish).not.toContain(AUDIT_SUBJECTS);
    expect(rolePermissions("admin", cfg).publish).toContain(AUDIT_SUBJECTS);
    const reader = rolePermissions("reader", cfg).publish;
    expect(reader).toEqual(
      expect.arrayContaining([
        `$JS.API.STREAM.INFO.${AUDIT_STREAM}`,
        `$JS.API.CONSUMER.CREATE.${AUDIT_STREAM}.>`,
        `$JS.API.CONSUMER.MSG.NEXT.${AUDIT_STREAM}.>`,
      ]),
    );
    for (const role of ["reader", "producer", "sink", "coordinator"] as const)
      expect(rolePermissions(role, cfg).publish.filter((s) => s.startsWith("sluice.audit."))).toEqual([]);
  });

  it("writes one user per role in the account block", () => {
    const text = natsAccountsBlock(
      cfg,
      Object.fromEntries(Roles.map((r) => [r, `pw-${r}`])) as Record<Role, string>,
      [["ingest.clicks.*", "sluice.in.clicks.{{partition(4,1)}}.{{wildcard(1)}}"]],
    );
    for (const r of Roles) expect(text).toContain(`{ user: "${r}", password: "pw-${r}"`);
    expect(text).toContain("jetstream: enabled");
    expect(text).toContain('"ingest.clicks.*": "sluice.in.clicks.{{partition(4,1)}}.{{wildcard(1)}}"');
  });
});
