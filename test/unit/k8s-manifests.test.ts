/**
 * deploy/k8s, checked offline (no cluster is reachable here): every object against its
 * Kubernetes, Prometheus Operator or KEDA schema (the `kubernetes-models` packages' validators,
 * plus a strict check that rejects fields the schema does not know, as `kubectl apply` does), and
 * what the manifests must get right for sluice: probes on the HTTP port the environment sets, a
 * grace period longer than the drain's deadline, the ScaledObject on the worker Deployment and its
 * desired count, environment variables the nodes read, Secrets and ConfigMaps that exist with the
 * keys the pods read, TLS on the NATS servers, and the accounts block in step with the config.
 */
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, posix } from "node:path";
import { fileURLToPath } from "node:url";
import type { IScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1";
import * as keda from "@kubernetes-models/keda/keda.sh/v1alpha1";
import type { IServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import * as monitoring from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import type { IDeployment, IStatefulSet } from "kubernetes-models/apps/v1";
import * as apps from "kubernetes-models/apps/v1";
import type { IJob } from "kubernetes-models/batch/v1";
import * as batch from "kubernetes-models/batch/v1";
import type { IPodDisruptionBudget } from "kubernetes-models/policy/v1";
import * as policy from "kubernetes-models/policy/v1";
import type { IConfigMap, IContainer, IPodSpec, IProbe, ISecret, IService } from "kubernetes-models/v1";
import * as core from "kubernetes-models/v1";
import { afterAll, describe, expect, it } from "vitest";
import { parse, parseAllDocuments } from "yaml";
import { natsServerBinary, natsServerVersion } from "../../nodes/cli/nats-binary.js";
import { makeTlsFiles } from "../../nodes/cli/tls-files.js";
import { parseConfig, type SluiceConfig, sinkOf } from "../../shared/contract/config.js";
import { inboxPrefixOf, natsAccountsBlock, type Role, Roles } from "../../shared/contract/permissions.js";
import { partitionMapping } from "../../shared/contract/wire.js";
import { MetricNames } from "../../shared/telemetry/attributes.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const k8sDir = join(root, "deploy", "k8s");

// ---------------------------------------------------------------------------------------------
// Schemas: apiVersion/kind -> the model class whose validator checks it.

interface ModelClass {
  apiVersion: string;
  kind: string;
  prototype: { validate(): void };
}
const isModelClass = (v: unknown): v is ModelClass =>
  typeof v === "function" &&
  typeof (v as Partial<ModelClass>).apiVersion === "string" &&
  typeof (v as Partial<ModelClass>).kind === "string";

/** Every kind of the API groups the manifests may use; any other kind is refused. */
const MODELS = new Map<string, ModelClass>();
for (const group of [core, apps, batch, policy, monitoring, keda])
  for (const v of Object.values(group)) if (isModelClass(v)) MODELS.set(`${v.apiVersion}/${v.kind}`, v);

interface Tracked {
  path: string;
  target: Record<string, unknown>;
  read: Set<string>;
  /** The validator listed the keys (a map, e.g. labels): any key is known. */
  listed: boolean;
}

/**
 * Validates `obj` against its kind's schema: the generated validator for types, required fields,
 * enums and formats, and unknown fields by watching which fields it reads. A schema's validator
 * reads each property the schema names and lists the keys of maps, so a field it never read,
 * in an object whose keys it never listed, is one the schema does not know (a misspelt field that
 * the API server's strict field validation would refuse). Returns the problems, none when valid.
 */
function schemaProblems(obj: unknown): string[] {
  const o = obj as { apiVersion?: unknown; kind?: unknown };
  const model = MODELS.get(`${String(o.apiVersion)}/${String(o.kind)}`);
  if (!model)
    return [`unknown kind ${String(o.apiVersion)}/${String(o.kind)}: no schema to check it against`];
  const tracked = new Map<object, Tracked>();
  const proxies = new WeakMap<object, object>();
  const wrap = (value: unknown, path: string): unknown => {
    if (value === null || typeof value !== "object") return value;
    const cached = proxies.get(value);
    if (cached) return cached;
    const t: Tracked = { path, target: value as Record<string, unknown>, read: new Set(), listed: false };
    if (!Array.isArray(value)) tracked.set(value, t);
    const child = (key: string): string => (Array.isArray(value) ? `${path}[${key}]` : `${path}.${key}`);
    const proxy = new Proxy(value, {
      get(target, key, receiver) {
        const v = Reflect.get(target, key, receiver);
        if (typeof key !== "string") return v;
        t.read.add(key);
        return Object.hasOwn(target, key) ? wrap(v, child(key)) : v;
      },
      has(target, key) {
        if (typeof key === "string") t.read.add(key);
        return Reflect.has(target, key);
      },
      ownKeys(target) {
        t.listed = true;
        return Reflect.ownKeys(target);
      },
    });
    proxies.set(value, proxy);
    return proxy;
  };
  try {
    model.prototype.validate.call(wrap(obj, ""));
  } catch (err) {
    return [(err as Error).message];
  }
  const unknown: string[] = [];
  for (const t of tracked.values())
    if (!t.listed)
      for (const key of Object.keys(t.target))
        if (!t.read.has(key)) unknown.push(`${t.path}.${key}`.slice(1));
  return unknown.map((p) => `unknown field ${p}`);
}

// ---------------------------------------------------------------------------------------------
// The manifests.

interface Meta {
  name: string;
  namespace?: string;
  labels?: Record<string, string>;
}
interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: Meta;
  file: string;
}

const files = readdirSync(k8sDir)
  .filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml")
  .sort();
const objects: K8sObject[] = files.flatMap((file) =>
  parseAllDocuments(readFileSync(join(k8sDir, file), "utf8")).flatMap((doc) => {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors.map((e) => e.message).join("; ")}`);
    const o = doc.toJS() as Omit<K8sObject, "file"> | null;
    return o === null ? [] : [{ ...o, file }];
  }),
);
const ofKind = <T>(kind: string): Array<T & K8sObject> =>
  objects.filter((o) => o.kind === kind) as unknown as Array<T & K8sObject>;
const named = <T>(kind: string, name: string): T & K8sObject => {
  const o = ofKind<T>(kind).find((x) => x.metadata.name === name);
  if (!o) throw new Error(`no ${kind} ${name} in deploy/k8s`);
  return o;
};

const deployments = ofKind<IDeployment>("Deployment");
const statefulSets = ofKind<IStatefulSet>("StatefulSet");
const jobs = ofKind<IJob>("Job");
const secrets = ofKind<ISecret>("Secret");
const configMaps = ofKind<IConfigMap>("ConfigMap");
const services = ofKind<IService>("Service");

/** A workload's pod spec, with the workload's name. */
const pods: Array<{ workload: string; spec: IPodSpec; labels: Record<string, string> }> = [
  ...deployments,
  ...statefulSets,
  ...jobs,
].map((w) => ({
  workload: `${w.kind} ${w.metadata.name}`,
  spec: w.spec!.template.spec!,
  labels: (w.spec!.template.metadata?.labels ?? {}) as Record<string, string>,
}));
/** The sluice containers (every role runs from the one image), with the role their args name. */
const sluiceContainers = pods.flatMap((p) =>
  p.spec.containers
    .filter((c) => c.image?.startsWith("sluice:"))
    .map((c) => ({ ...p, container: c, role: c.args?.[0] ?? "" })),
);
const deploymentOf = (role: string): IDeployment & K8sObject => {
  const found = deployments.filter((d) => d.spec!.template.spec!.containers[0]!.args?.[0] === role);
  expect(found, `one Deployment runs \`sluice ${role}\``).toHaveLength(1);
  return found[0]!;
};

const envOf = (c: IContainer): Map<string, string | undefined> =>
  new Map((c.env ?? []).map((e) => [e.name, e.value]));

/** The keys a Secret or ConfigMap holds (data, stringData, binaryData). */
function keysOf(o: ISecret | IConfigMap): string[] {
  const parts = [o.data, (o as ISecret).stringData, (o as IConfigMap).binaryData];
  return parts.flatMap((p) => Object.keys(p ?? {}));
}
function textOf(o: ISecret | IConfigMap, key: string): string {
  const s = o as ISecret;
  if (s.stringData?.[key] !== undefined) return s.stringData[key]!;
  const d = o.data?.[key];
  if (d === undefined) throw new Error(`${o.metadata?.name}: no key ${key}`);
  return o.kind === "Secret" ? Buffer.from(d, "base64").toString("utf8") : d;
}

/**
 * Which Secret or ConfigMap key a file path in a container is: the volume mounted over it, and
 * the key below the mount (after the volume's `items` renaming, if any).
 */
function fileSource(pod: IPodSpec, c: IContainer, path: string): { kind: string; name: string; key: string } {
  const mount = (c.volumeMounts ?? [])
    .filter((m) => path.startsWith(`${m.mountPath.replace(/\/$/, "")}/`))
    .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
  if (!mount) throw new Error(`${c.name}: nothing is mounted over ${path}`);
  const rel = posix.relative(mount.mountPath, path);
  const volume = (pod.volumes ?? []).find((v) => v.name === mount.name);
  if (!volume) throw new Error(`${c.name}: mount ${mount.name} has no volume`);
  const source = volume.secret
    ? { kind: "Secret", name: volume.secret.secretName!, items: volume.secret.items }
    : volume.configMap
      ? { kind: "ConfigMap", name: volume.configMap.name!, items: volume.configMap.items }
      : null;
  if (!source) return { kind: "other", name: volume.name, key: rel };
  const item = source.items?.find((i) => i.path === rel);
  return { kind: source.kind, name: source.name, key: item ? item.key : rel };
}
/** The text of the file at `path` in a container, from the Secret or ConfigMap mounted there. */
function fileText(pod: IPodSpec, c: IContainer, path: string): string {
  const s = fileSource(pod, c, path);
  expect(["Secret", "ConfigMap"], `${c.name}: ${path} comes from a Secret or ConfigMap`).toContain(s.kind);
  return textOf(named<ISecret & IConfigMap>(s.kind, s.name), s.key);
}

/** The port number a probe or Service names, in a container. */
function portNumber(c: IContainer, port: number | string | undefined): number | undefined {
  if (typeof port === "number") return port;
  return c.ports?.find((p) => p.name === port)?.containerPort;
}

/** Rewrites the accounts.conf of the nats-accounts Secret in secrets.yaml (a block scalar). */
function updateAccountsBlock(block: string): void {
  const file = join(k8sDir, "secrets.yaml");
  const text = readFileSync(file, "utf8");
  const start = text.indexOf("  accounts.conf: |\n");
  const end = text.indexOf("\n---", start);
  if (start < 0 || end < 0) throw new Error("secrets.yaml: no accounts.conf block to rewrite");
  const indented = block.replace(/^(?=.)/gm, "    ").replace(/\n$/, "");
  writeFileSync(file, `${text.slice(0, start)}  accounts.conf: |\n${indented}${text.slice(end)}`);
}

const sluiceConfigText = textOf(named<IConfigMap>("ConfigMap", "sluice-config"), "config.yaml");
const sluiceConfig: SluiceConfig = parseConfig(parse(sluiceConfigText));

// ---------------------------------------------------------------------------------------------

describe("deploy/k8s: every object against its schema", () => {
  it("has the objects a cluster needs, and kustomization.yaml lists every file", () => {
    const kinds = new Set(objects.map((o) => o.kind));
    for (const kind of [
      "Namespace",
      "Secret",
      "ConfigMap",
      "StatefulSet",
      "Deployment",
      "Service",
      "PodDisruptionBudget",
      "ServiceMonitor",
      "ScaledObject",
    ])
      expect(kinds, kind).toContain(kind);
    const kustomization = parse(readFileSync(join(k8sDir, "kustomization.yaml"), "utf8")) as {
      kind: string;
      resources: string[];
    };
    expect(kustomization.kind).toBe("Kustomization");
    expect([...kustomization.resources].sort()).toEqual(files);
  });

  it("refuses a misspelt field, a wrong type, a missing required field and an unknown kind", () => {
    const deployment = {
      apiVersion: "apps/v1",
      kind: "Deployment",
      metadata: { name: "x", labels: { any: "label" } },
      spec: {
        selector: { matchLabels: { a: "b" } },
        template: {
          metadata: { labels: { a: "b" } },
          spec: { containers: [{ name: "c", image: "i", env: [{ name: "E", value: "v" }] }] },
        },
      },
    };
    expect(schemaProblems(deployment)).toEqual([]);
    const spec = deployment.spec;
    expect(schemaProblems({ ...deployment, spec: { ...spec, replica: 2 } })).toEqual([
      "unknown field spec.replica",
    ]);
    const container = { name: "c", image: "i", livenessProbe: { httpGet: { path: "/healthz", prot: 80 } } };
    const template = { ...spec.template, spec: { containers: [container] } };
    expect(schemaProblems({ ...deployment, spec: { ...spec, template } }).join()).toMatch(
      /port|unknown field spec\.template\.spec\.containers\[0\]\.livenessProbe\.httpGet\.prot/,
    );
    expect(schemaProblems({ ...deployment, spec: { ...spec, replicas: "2" } }).join()).toMatch(/integer/);
    expect(schemaProblems({ ...deployment, spec: { template: spec.template } }).join()).toMatch(/selector/);
    expect(schemaProblems({ apiVersion: "example.com/v1", kind: "Widget", metadata: { name: "w" } })).toEqual(
      ["unknown kind example.com/v1/Widget: no schema to check it against"],
    );
    const scaled = { apiVersion: "keda.sh/v1alpha1", kind: "ScaledObject", metadata: { name: "s" } };
    expect(schemaProblems({ ...scaled, spec: { scaleTargetRef: {}, triggers: [] } }).join()).toMatch(/name/);
  });

  it.each(objects.map((o) => [`${o.file}: ${o.kind} ${o.metadata?.name}`, o] as const))(
    "%s is valid",
    (_, o) => {
      const { file: _file, ...obj } = o;
      expect(schemaProblems(obj)).toEqual([]);
      if (o.kind !== "Namespace") expect(o.metadata.namespace).toBe("sluice");
    },
  );
});

describe("deploy/k8s: the sluice nodes", () => {
  const shutdownSource = readFileSync(join(root, "nodes", "node-options.ts"), "utf8");
  /** Every SLUICE_* variable the nodes read (flags' variables and SLUICE_PASSWORD). */
  const knownEnv = new Set(shutdownSource.match(/SLUICE_[A-Z_]+/g));
  const drainDeadlineMs = Number(/deadlineMs = ([\d_]+)/.exec(shutdownSource)?.[1]?.replaceAll("_", ""));

  it("runs a coordinator and a worker Deployment, and a sink only for an SQLite sink", () => {
    expect(deploymentOf("coordinator").spec!.replicas).toBe(2);
    expect(deploymentOf("worker").spec!.replicas).toBe(3);
    const sqlite = sluiceConfig.pipelines.some((p) => sinkOf(sluiceConfig, p).type === "sqlite");
    const sinks = deployments.filter((d) => d.spec!.template.spec!.containers[0]!.args?.[0] === "sink");
    expect(sinks).toHaveLength(sqlite ? 1 : 0);
  });

  it("sets only SLUICE_* variables the nodes read", () => {
    expect(knownEnv.size).toBeGreaterThan(10);
    for (const { workload, container } of sluiceContainers)
      for (const name of envOf(container).keys())
        if (name.startsWith("SLUICE_")) expect(knownEnv, `${workload}: ${name}`).toContain(name);
  });

  it("probes /healthz (alive) and /readyz (ready) on the HTTP port the environment sets, bound to all addresses", () => {
    const nodes = sluiceContainers.filter((c) => c.role === "worker" || c.role === "coordinator");
    expect(nodes.length).toBe(2);
    for (const { workload, container: c } of nodes) {
      const env = envOf(c);
      const port = Number(env.get("SLUICE_HTTP_PORT"));
      expect(port, `${workload}: SLUICE_HTTP_PORT`).toBeGreaterThan(0);
      expect(env.get("SLUICE_HTTP_BIND"), `${workload}: SLUICE_HTTP_BIND`).toBe("0.0.0.0");
      const probe = (p: IProbe | undefined, path: string, what: string): void => {
        expect(p?.httpGet?.path, `${workload}: ${what} path`).toBe(path);
        expect(portNumber(c, p?.httpGet?.port), `${workload}: ${what} port`).toBe(port);
      };
      probe(c.livenessProbe, "/healthz", "liveness");
      probe(c.readinessProbe, "/readyz", "readiness");
      if (c.startupProbe) probe(c.startupProbe, "/healthz", "startup");
    }
  });

  it("gives a drain longer than its deadline before SIGKILL, without a preStop hook", () => {
    expect(drainDeadlineMs).toBe(40_000);
    for (const { workload, spec, container } of sluiceContainers) {
      if (workload.startsWith("Job")) continue;
      // The kubelet's default is 30 s: it must be set, and above the deadline.
      expect(spec.terminationGracePeriodSeconds, workload).toBeGreaterThan(drainDeadlineMs / 1000);
      expect(container.lifecycle?.preStop, workload).toBeUndefined();
    }
  });

  it("connects every node over TLS to each NATS server by the StatefulSet's stable names", () => {
    const nats = named<IStatefulSet>("StatefulSet", "nats");
    const clientPort = nats.spec!.template.spec!.containers[0]!.ports!.find((p) => p.name === "client")!;
    const expected = Array.from(
      { length: nats.spec!.replicas! },
      (_, i) =>
        `tls://nats-${i}.${nats.spec!.serviceName}.sluice.svc.cluster.local:${clientPort.containerPort}`,
    );
    named<IService>("Service", nats.spec!.serviceName!);
    for (const { workload, container } of sluiceContainers) {
      const env = envOf(container);
      expect(env.get("SLUICE_SERVERS")?.split(","), workload).toEqual(expected);
      expect(env.get("SLUICE_TLS_CA"), workload).toBeDefined();
    }
  });

  it("mounts the config, the role's credentials, the CA and the sink's password where the environment points", () => {
    for (const { workload, spec, container, role } of sluiceContainers) {
      const env = envOf(container);
      expect(fileText(spec, container, env.get("SLUICE_CONFIG")!), workload).toBe(sluiceConfigText);
      // `provision` runs as the admin; every other command as its own role.
      const asRole = (role === "provision" ? "admin" : role) as Role;
      const creds = JSON.parse(fileText(spec, container, env.get("SLUICE_CREDENTIALS")!)) as Record<
        string,
        string
      >;
      expect(creds, workload).toEqual({
        user: asRole,
        password: expect.any(String),
        inboxPrefix: inboxPrefixOf(asRole),
      });
      expect(fileText(spec, container, env.get("SLUICE_TLS_CA")!), workload).toMatch(
        /CA certificate|BEGIN CERTIFICATE/,
      );
      for (const file of ["SLUICE_TLS_CERT", "SLUICE_TLS_KEY", "SLUICE_PASSWORD_FILE"])
        if (env.has(file)) fileText(spec, container, env.get(file)!);
      if (role === "worker" || role === "coordinator")
        for (const p of sluiceConfig.pipelines) {
          const sink = sinkOf(sluiceConfig, p);
          if (sink.type === "postgres" && sink.passwordFile)
            expect(fileText(spec, container, sink.passwordFile), workload).not.toBe("");
          if (sink.type === "postgres" && sink.passwordEnv)
            expect(env.has(sink.passwordEnv), workload).toBe(true);
        }
    }
  });

  it("refers only to Secrets and ConfigMaps the manifests define, and to keys they hold", () => {
    const find = (kind: string, name: string): ISecret | IConfigMap | undefined =>
      (kind === "Secret" ? secrets : configMaps).find((o) => o.metadata.name === name);
    for (const { workload, spec } of pods) {
      for (const v of spec.volumes ?? []) {
        const ref = v.secret
          ? { kind: "Secret", name: v.secret.secretName!, items: v.secret.items ?? [] }
          : v.configMap
            ? { kind: "ConfigMap", name: v.configMap.name!, items: v.configMap.items ?? [] }
            : null;
        if (!ref) continue;
        const o = find(ref.kind, ref.name);
        expect(o, `${workload}: ${ref.kind} ${ref.name}`).toBeDefined();
        for (const item of ref.items) expect(keysOf(o!), `${workload}: ${ref.name}`).toContain(item.key);
      }
      for (const c of [...spec.containers, ...(spec.initContainers ?? [])]) {
        for (const e of c.env ?? []) {
          const s = e.valueFrom?.secretKeyRef ?? e.valueFrom?.configMapKeyRef;
          if (!s) continue;
          const kind = e.valueFrom?.secretKeyRef ? "Secret" : "ConfigMap";
          expect(keysOf(find(kind, s.name!)!), `${workload}: ${e.name}`).toContain(s.key);
        }
        for (const e of c.envFrom ?? []) {
          const ref = e.secretRef ? ["Secret", e.secretRef.name!] : ["ConfigMap", e.configMapRef!.name!];
          expect(find(ref[0]!, ref[1]!), `${workload}: envFrom ${ref[1]}`).toBeDefined();
        }
      }
    }
  });

  it("keeps a coordinator and all but one worker through voluntary disruptions", () => {
    const pdbs = ofKind<IPodDisruptionBudget>("PodDisruptionBudget");
    for (const role of ["coordinator", "worker"]) {
      const d = deploymentOf(role);
      const podLabels = d.spec!.template.metadata!.labels!;
      const pdb = pdbs.filter((p) =>
        Object.entries(p.spec!.selector!.matchLabels ?? {}).every(([k, v]) => podLabels[k] === v),
      );
      expect(pdb, `a PodDisruptionBudget covers ${role}`).toHaveLength(1);
      const { minAvailable, maxUnavailable } = pdb[0]!.spec!;
      if (minAvailable !== undefined) {
        expect(minAvailable).toBeGreaterThanOrEqual(1);
        expect(minAvailable).toBeLessThan(d.spec!.replicas!);
      } else expect(maxUnavailable).toBe(1);
    }
  });
});

describe("deploy/k8s: metrics and autoscaling", () => {
  it("scrapes /metrics of every coordinator and worker through a ServiceMonitor", () => {
    const monitors = ofKind<IServiceMonitor>("ServiceMonitor");
    expect(monitors).toHaveLength(1);
    const sm = monitors[0]!.spec!;
    const selected = services.filter((s) =>
      Object.entries(sm.selector.matchLabels ?? {}).every(([k, v]) => s.metadata.labels?.[k] === v),
    );
    for (const role of ["coordinator", "worker"]) {
      const d = deploymentOf(role);
      const container = d.spec!.template.spec!.containers[0]!;
      const podLabels = d.spec!.template.metadata!.labels!;
      const svc = selected.find((s) =>
        Object.entries(s.spec!.selector ?? {}).every(([k, v]) => podLabels[k] === v),
      );
      expect(svc, `the ServiceMonitor selects a Service over the ${role} pods`).toBeDefined();
      for (const ep of sm.endpoints ?? []) {
        expect(ep.path ?? "/metrics").toBe("/metrics");
        const port = svc!.spec!.ports!.find((p) => p.name === ep.port);
        expect(port, `${svc!.metadata.name} has port ${ep.port}`).toBeDefined();
        expect(portNumber(container, port!.targetPort ?? port!.port)).toBe(
          Number(envOf(container).get("SLUICE_HTTP_PORT")),
        );
      }
    }
  });

  it("scales the worker Deployment to the coordinators' desired count, within the config's bounds", () => {
    const scaled = ofKind<IScaledObject>("ScaledObject");
    expect(scaled).toHaveLength(1);
    const so = scaled[0]!.spec!;
    const worker = deploymentOf("worker");
    expect(so.scaleTargetRef).toMatchObject({ kind: "Deployment", name: worker.metadata.name });
    expect(so.scaleTargetRef.apiVersion ?? "apps/v1").toBe("apps/v1");
    expect(so.minReplicaCount).toBe(sluiceConfig.autoscale.minWorkers);
    expect(so.maxReplicaCount).toBe(sluiceConfig.autoscale.maxWorkers);
    expect(so.triggers).toHaveLength(1);
    const trigger = so.triggers[0]!;
    expect(trigger.type).toBe("prometheus");
    const meta = trigger.metadata as Record<string, string>;
    expect(meta.query).toMatch(new RegExp(`^max\\(${MetricNames.desiredWorkers}\\b`));
    // AverageValue with threshold 1: the HPA's count is ceil(desired / 1), the desired count.
    expect(trigger.metricType ?? "AverageValue").toBe("AverageValue");
    expect(Number(meta.threshold)).toBe(1);
    // No value is an error (the count stays), not 0 (down to the minimum).
    expect(meta.ignoreNullValues).toBe("false");
    // The hysteresis is the coordinator's: the HPA adds no stabilization window.
    const behavior = so.advanced?.horizontalPodAutoscalerConfig?.behavior;
    expect(behavior?.scaleUp?.stabilizationWindowSeconds).toBe(0);
    expect(behavior?.scaleDown?.stabilizationWindowSeconds).toBe(0);
  });
});

describe("deploy/k8s: the NATS servers", () => {
  const nats = named<IStatefulSet>("StatefulSet", "nats");
  const pod = nats.spec!.template.spec!;
  const container = pod.containers[0]!;
  const confPath = container.args![container.args!.indexOf("--config") + 1]!;
  const conf = fileText(pod, container, confPath);

  /** The body of `name { … }` (the first at the given text's top level). */
  function block(text: string, name: string): string {
    const start = new RegExp(`^\\s*${name}\\s*[:=]?\\s*\\{`, "m").exec(text);
    if (!start) throw new Error(`no ${name} block`);
    let depth = 0;
    for (let i = start.index + start[0].length - 1; i < text.length; i++) {
      if (text[i] === "{") depth++;
      if (text[i] === "}" && --depth === 0) return text.slice(start.index + start[0].length, i);
    }
    throw new Error(`${name} block not closed`);
  }
  const value = (text: string, key: string): string | undefined =>
    new RegExp(`^\\s*${key}\\s*[:=]\\s*"?([^"\\n]+?)"?\\s*$`, "m").exec(text)?.[1];
  const withoutBlock = (text: string, name: string): string => text.replace(block(text, name), "");

  it("is a 3-server StatefulSet with a volume per server and a PodDisruptionBudget", () => {
    expect(nats.spec!.replicas).toBe(3);
    expect(nats.spec!.volumeClaimTemplates?.[0]?.metadata?.name).toBe("data");
    const headless = named<IService>("Service", nats.spec!.serviceName!);
    expect(headless.spec!.clusterIP).toBe("None");
    const labels = nats.spec!.template.metadata!.labels!;
    const pdb = ofKind<IPodDisruptionBudget>("PodDisruptionBudget").find((p) =>
      Object.entries(p.spec!.selector!.matchLabels ?? {}).every(([k, v]) => labels[k] === v),
    );
    expect(pdb?.spec?.maxUnavailable).toBe(1);
    // JetStream's store on the server's own volume.
    const store = value(block(conf, "jetstream"), "store_dir")!;
    const dataMount = container.volumeMounts!.find((m) => m.name === "data")!;
    expect(store.startsWith(`${dataMount.mountPath}/`)).toBe(true);
  });

  it("serves clients over TLS, routes with mutual TLS to each of its peers, encrypts its store", () => {
    const clientTls = block(withoutBlock(conf, "cluster"), "tls");
    const cluster = block(conf, "cluster");
    const routeTls = block(cluster, "tls");
    for (const tls of [clientTls, routeTls])
      for (const key of ["cert_file", "key_file", "ca_file"]) {
        const src = fileSource(pod, container, value(tls, key)!);
        expect(src.kind, key).toBe("Secret");
        expect(keysOf(named<ISecret>("Secret", src.name))).toContain(src.key);
      }
    expect(value(routeTls, "verify")).toBe("true");
    const routeList = /^\s*routes\s*[:=]\s*\[([^\]]*)\]/m.exec(cluster)?.[1] ?? "";
    const routes = [...routeList.matchAll(/nats-route:\/\/([^"\s]+)/g)].map((m) => m[1]);
    const port = value(cluster, "port");
    expect(routes).toEqual(
      Array.from(
        { length: nats.spec!.replicas! },
        (_, i) => `nats-${i}.${nats.spec!.serviceName}.sluice.svc.cluster.local:${port}`,
      ),
    );
    expect(value(conf, "server_name")).toBe("$POD_NAME");
    // The store encrypted at rest, with a key from a Secret in the servers' environment.
    const jetstream = block(conf, "jetstream");
    expect(value(jetstream, "cipher")).toBe("aes");
    const keyVar = value(jetstream, "key")!.replace(/^\$/, "");
    expect(container.env?.find((e) => e.name === keyVar)?.valueFrom?.secretKeyRef).toBeDefined();
    expect(container.env?.find((e) => e.name === "POD_NAME")?.valueFrom?.fieldRef?.fieldPath).toBe(
      "metadata.name",
    );
  });

  it("includes the accounts block `sluice config permissions` prints for the ConfigMap's config", () => {
    const include = /^\s*include\s+"?([^"\n]+)"?/m.exec(conf)![1]!;
    const accounts = fileText(pod, container, posix.join(posix.dirname(confPath), include));
    // What the CLI prints (nodes/cli/main.ts, `config permissions`): placeholders for passwords.
    const placeholders = Object.fromEntries(
      Roles.map((r) => [r, `<${r} password or bcrypt hash>`]),
    ) as Record<Role, string>;
    const mappings = sluiceConfig.pipelines
      .filter((p) => p.streams === "per-shard")
      .map((p) => partitionMapping(p.name, p.shards));
    const expected = natsAccountsBlock(sluiceConfig, placeholders, mappings);
    // After a change of the permissions or the pipelines: SLUICE_UPDATE_K8S=1 rewrites the block.
    if (accounts !== expected && process.env.SLUICE_UPDATE_K8S === "1") updateAccountsBlock(expected);
    else
      expect(
        accounts,
        "deploy/k8s/secrets.yaml nats-accounts is not what `sluice config permissions` prints for sluice-config; " +
          "SLUICE_UPDATE_K8S=1 npx vitest run test/unit/k8s-manifests.test.ts rewrites it",
      ).toBe(expected);
  });

  // The real server reads the config, its include and the TLS files (`nats-server -t`).
  const version = natsServerVersion();
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  it.skipIf(version === null)("is a config nats-server accepts, with the Secrets' files in place", () => {
    const dir = mkdtempSync(join(tmpdir(), "sluice-k8s-nats-"));
    dirs.push(dir);
    const tls = makeTlsFiles(join(dir, "pki"), ["nats"]);
    const server = tls.servers.get("nats")!;
    /** Lays out every mount of the container under `dir` as the pod would see it. */
    for (const m of container.volumeMounts!) {
      const at = join(dir, m.mountPath);
      mkdirSync(at, { recursive: true });
      const v = pod.volumes?.find((x) => x.name === m.name);
      const src = v?.secret
        ? named<ISecret>("Secret", v.secret.secretName!)
        : v?.configMap
          ? named<IConfigMap>("ConfigMap", v.configMap.name!)
          : null;
      for (const key of src ? keysOf(src) : []) {
        const real: Record<string, string> = {
          "ca.crt": readFileSync(tls.caFile, "utf8"),
          "tls.crt": readFileSync(server.certFile, "utf8"),
          "tls.key": readFileSync(server.keyFile, "utf8"),
        };
        const text = src!.kind === "Secret" && real[key] !== undefined ? real[key] : textOf(src!, key);
        // Absolute paths in the config point into `dir` instead of the pod's root.
        writeFileSync(join(at, key), text.replace(/"\/(etc|data|var)\//g, `"${dir}/$1/`));
      }
    }
    // The container's environment: values, the pod's name, Secrets' keys (a placeholder, as
    // "<random key>", stands for a random value).
    const env: Record<string, string> = {};
    for (const e of container.env ?? []) {
      const ref = e.valueFrom?.secretKeyRef;
      const text = ref ? textOf(named<ISecret>("Secret", ref.name!), ref.key) : undefined;
      if (e.value !== undefined) env[e.name] = e.value;
      else if (e.valueFrom?.fieldRef?.fieldPath === "metadata.name") env[e.name] = `${nats.metadata.name}-0`;
      else if (text !== undefined)
        env[e.name] = text.startsWith("<") ? randomBytes(32).toString("hex") : text;
    }
    const r = spawnSync(natsServerBinary(), ["-t", "-c", join(dir, confPath)], {
      env: { PATH: process.env.PATH, ...env },
      encoding: "utf8",
    });
    expect(`${r.stdout}${r.stderr}`).toMatch(/configuration file .* is valid/);
    expect(r.status).toBe(0);
  });
});
