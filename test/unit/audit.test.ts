import { describe, expect, it } from "vitest";
import { formatAuditLine } from "../../nodes/cli/audit-commands.js";
import { subjectOf } from "../../shared/adapters/nats/audit-log.js";
import {
  type AuditEntry,
  auditChangeText,
  auditEntry,
  auditTargetText,
  decodeAudit,
  encodeAudit,
} from "../../shared/contract/audit.js";
import { configRevision, parseConfig } from "../../shared/contract/config.js";
import { AUDIT_SUBJECTS, auditKindSubjects, subjectMatches } from "../../shared/contract/wire.js";
import { configAuditEntry, fenceAuditEntry } from "../../shared/core/audit-entries.js";

const admin = { role: "admin", id: "cli:ops@host", user: "admin" };
const at = Date.UTC(2025, 0, 2, 3, 4, 5);

const entries: AuditEntry[] = [
  { v: 1, kind: "config", who: admin, at, target: { pipeline: "demo" }, before: null, after: { hash: "ab" } },
  {
    v: 1,
    kind: "schema",
    who: admin,
    at,
    target: { subject: "orders" },
    before: { version: 1, compat: "BACKWARD", revision: 3 },
    after: { version: 2, id: 7, compat: "BACKWARD", revision: 9 },
  },
  {
    v: 1,
    kind: "ref",
    who: admin,
    at,
    target: { table: "customers" },
    before: null,
    after: { revision: 2 },
    detail: { file: "c.csv", added: 2, changed: 0, unchanged: 0 },
  },
  fenceAuditEntry(
    { pipeline: "demo", shard: 3, epoch: 5, previous: { epoch: 4, owner: "w1" } },
    { role: "worker", id: "w2" },
    at,
  ),
];

describe("audit entries", () => {
  it("round-trip through their JSON encoding, each kind on a subject of its own under sluice.audit.>", () => {
    for (const e of entries) {
      expect(decodeAudit(encodeAudit(e))).toEqual(e);
      expect(subjectMatches(AUDIT_SUBJECTS, subjectOf(e))).toBe(true);
      expect(subjectMatches(auditKindSubjects(e.kind), subjectOf(e))).toBe(true);
    }
    expect(entries.map(subjectOf)).toEqual([
      "sluice.audit.config.demo",
      "sluice.audit.schema.orders",
      "sluice.audit.ref.customers",
      "sluice.audit.fence.demo.3",
    ]);
    // Human readable as stored: an operator reads it with any NATS client.
    expect(new TextDecoder().decode(encodeAudit(entries[3]!))).toContain('"kind":"fence"');
  });

  it("decodes nothing that is not an entry of a known format", () => {
    const bytes = (v: unknown) => new TextEncoder().encode(JSON.stringify(v));
    expect(decodeAudit(new TextEncoder().encode("not json"))).toBeNull();
    expect(decodeAudit(bytes({ ...entries[0], v: 2 }))).toBeNull();
    expect(decodeAudit(bytes({ ...entries[0], kind: "other" }))).toBeNull();
    expect(decodeAudit(bytes({ ...entries[3], after: {} }))).toBeNull();
  });

  it("adds the writer and the time to a command's change", () => {
    const e = auditEntry(
      { kind: "ref", target: { table: "t", key: "k" }, before: null, after: { revision: 1 } },
      admin,
      at,
    );
    expect(e).toEqual({
      v: 1,
      kind: "ref",
      who: admin,
      at,
      target: { table: "t", key: "k" },
      before: null,
      after: { revision: 1 },
    });
  });

  it("prints one line per entry: time, who, kind, target, before -> after", () => {
    expect(entries.map(auditTargetText)).toEqual(["demo", "orders", "customers", "demo.3"]);
    expect(entries.map(auditChangeText)).toEqual([
      "- -> ab",
      "v1 BACKWARD -> v2 BACKWARD (id 7, revision 9)",
      "revision - -> 2 (2 added, 0 changed, 0 unchanged)",
      "epoch 4 (w1) -> 5",
    ]);
    const line = formatAuditLine({ ...entries[3]!, seq: 12 });
    expect(line).toMatch(/^2025-01-02T03:04:05\.000Z +w2 +fence +demo\.3 +epoch 4 \(w1\) -> 5$/);
    expect(formatAuditLine({ ...entries[1]!, seq: 2 })).toContain("cli:ops@host (admin)");
  });
});

describe("config changes", () => {
  const cfg = parseConfig({ pipelines: [{ name: "demo", shards: 4 }] });
  const changed = parseConfig({ pipelines: [{ name: "demo", shards: 8 }] });
  const p = cfg.pipelines[0]!;

  it("records a pipeline's first config with nothing before it", () => {
    expect(configAuditEntry("demo", configRevision(p), null, admin, at)).toEqual({
      v: 1,
      kind: "config",
      who: admin,
      at,
      target: { pipeline: "demo" },
      before: null,
      after: { hash: configRevision(p) },
    });
  });

  it("records nothing when the config's hash is the last one audited, and the change when it differs", () => {
    const first = configAuditEntry("demo", configRevision(p), null, admin, at)!;
    expect(configAuditEntry("demo", configRevision(p), first, admin, at + 1)).toBeNull();
    // The same config written otherwise (defaults spelled out) hashes the same.
    const spelled = parseConfig({ pipelines: [{ name: "demo", shards: 4, replicas: 3, stages: [] }] });
    expect(configRevision(spelled.pipelines[0]!)).toBe(configRevision(p));
    const next = configAuditEntry("demo", configRevision(changed.pipelines[0]!), first, admin, at + 2);
    expect(next?.before).toEqual({ hash: configRevision(p) });
    expect(next?.after.hash).not.toBe(configRevision(p));
    expect(next?.after.hash).toMatch(/^[0-9a-f]{16}$/);
  });
});
