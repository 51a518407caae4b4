#!/usr/bin/env node
/** The `sluice` command line. */
import { pathToFileURL } from "node:url";
import { Command, InvalidArgumentError, Option } from "commander";
import { loadConfigFile } from "../../shared/adapters/config-file.js";
import { commandActor } from "../../shared/adapters/nats/audit-log.js";
import { connectNats } from "../../shared/adapters/nats/connection.js";
import { provision } from "../../shared/adapters/nats/provision.js";
import { describeSink, pipelineOf, sinkOf } from "../../shared/contract/config.js";
import { ErrorCode, isSluiceError, SluiceError } from "../../shared/contract/errors.js";
import { natsAccountsBlock, type Role, Roles } from "../../shared/contract/permissions.js";
import { inputStreams, partitionMapping } from "../../shared/contract/wire.js";
import { credentialsFrom, tlsFrom } from "../node-options.js";
import { addAuditCommands } from "./audit-commands.js";
import { formatChaos, runChaos } from "./chaos.js";
import { FAULTS, parseScenario } from "./chaos-faults.js";
import {
  connectCluster,
  connectProducer,
  coordinatorScript,
  isOurProcess,
  openSinkInspector,
  readClusterConfig,
  readClusterFile,
  sinkScript,
  workerScript,
} from "./cluster-file.js";
import { checkCheckpointsAgainstStreams } from "./cluster-guards.js";
import { runDemo } from "./demo.js";
import { runMergeDemo } from "./demo-merge.js";
import { addDlqCommands } from "./dlq-commands.js";
import { intOption } from "./int-option.js";
import { Interrupted, onInterrupt } from "./interrupt.js";
import { type LoadProgress, runLoad } from "./load.js";
import { addWorker, down, removeWorker, restartProcess, type UpOptions, up } from "./local-cluster.js";
import { addMergeCommands } from "./merge-commands.js";
import { waitSettled } from "./readiness.js";
import { addRefCommands } from "./ref-commands.js";
import { addSchemaCommands } from "./schema-commands.js";
import { formatStatus, gatherStatus } from "./status.js";
import { watchStatus } from "./status-watch.js";
import { formatVerify, verify } from "./verify.js";

const int = (name: string) => intOption(name, 0);

/** `--sink` and `--postgres-url` as `up` takes them. */
function sinkOptions(o: { sink?: string; postgresUrl?: string }): Pick<UpOptions, "sink" | "postgresUrl"> {
  if (o.sink !== undefined && o.sink !== "sqlite" && o.sink !== "postgres" && o.sink !== "jetstream")
    throw new InvalidArgumentError("--sink must be sqlite, postgres or jetstream");
  if (o.postgresUrl !== undefined && o.sink !== "postgres")
    throw new InvalidArgumentError("--postgres-url goes with --sink postgres");
  return {
    ...(o.sink ? { sink: o.sink } : {}),
    ...(o.postgresUrl ? { postgresUrl: o.postgresUrl } : {}),
  };
}

const program = new Command("sluice")
  .description("Exactly-once ingestion cluster on NATS JetStream")
  .showHelpAfterError();

program
  .command("up")
  .description("start a local cluster: 3 NATS nodes, coordinators and workers, each its own process")
  .option("--dir <dir>", "cluster directory", ".sluice")
  .option("--workers <n>", "workers", int("--workers"), 3)
  .option("--coordinators <n>", "coordinators", int("--coordinators"), 2)
  .option(
    "--config <file>",
    "pipelines, sinks, timing and worker settings (YAML or JSON); default: pipeline 'demo' with 16 shards",
  )
  .option(
    "--port-base <port>",
    "first NATS client port (cluster +2000, monitor +4000)",
    int("--port-base"),
    14222,
  )
  .option(
    "--nats-runtime <r>",
    "NATS nodes as plain processes or Docker containers: process|container",
    "process",
  )
  .option("--sink <type>", "where pipelines without a sink of their own commit: sqlite|postgres|jetstream")
  .option(
    "--postgres-url <url>",
    "with --sink postgres: an existing database (default: a private server under the cluster directory)",
  )
  .option("--detach", "return once the cluster is ready, leaving it running")
  .option("--insecure", "plain NATS: no TLS, no users, no encryption at rest (default: all three)")
  .action(
    async (o: {
      dir: string;
      workers: number;
      coordinators: number;
      config?: string;
      portBase: number;
      natsRuntime: string;
      sink?: string;
      postgresUrl?: string;
      detach?: boolean;
      insecure?: boolean;
    }) => {
      if (o.natsRuntime !== "process" && o.natsRuntime !== "container") {
        throw new InvalidArgumentError("--nats-runtime must be process or container");
      }
      const c = await up({
        natsRuntime: o.natsRuntime,
        dir: o.dir,
        workers: o.workers,
        coordinators: o.coordinators,
        portBase: o.portBase,
        configFile: o.config,
        insecure: o.insecure === true,
        ...sinkOptions(o),
      });
      const cfg = readClusterConfig(c);
      const nc = await connectCluster(c, "reader", "sluice-up");
      const sink = openSinkInspector(c, nc);
      try {
        await waitSettled(nc, cfg, sink, 60_000);
      } finally {
        await sink.close();
        await nc.close();
      }
      console.log(`sluice cluster ready in ${c.dir}`);
      for (const n of c.nats) console.log(`  nats ${n.id}  pid ${n.pid}  ${n.url}  monitor ${n.monitor}`);
      const http = (p: { http?: string }, what: string): string => (p.http ? `  ${what} ${p.http}` : "");
      for (const p of c.sinks)
        console.log(`  sink ${p.id}  pid ${p.pid}  owns ${c.sqlite}${http(p, "metrics")}`);
      for (const p of c.coordinators)
        console.log(`  coordinator ${p.id}  pid ${p.pid}${http(p, "dashboard")}`);
      for (const p of c.workers) console.log(`  worker ${p.id}  pid ${p.pid}${http(p, "metrics")}`);
      console.log(
        `  logs ${c.dir}/logs\n  pipelines ${cfg.pipelines.map((p) => `${p.name} (${p.shards} shards)`).join(", ")}`,
      );
      console.log(
        `publish to ingest.<pipeline>.<key> with a Nats-Msg-Id header (CBOR or JSON map); stop with: npx sluice down --dir ${o.dir}`,
      );
      if (o.detach) return;
      console.log("running in the foreground; Ctrl-C stops the cluster");
      await new Promise<void>((resolve) => {
        const stop = () => resolve();
        process.once("SIGINT", stop);
        process.once("SIGTERM", stop);
      });
      await down(o.dir);
    },
  );

program
  .command("down")
  .description("stop everything a local cluster started (workers drain first)")
  .option("--dir <dir>", "cluster directory", ".sluice")
  .action(async (o: { dir: string }) => {
    await down(o.dir);
    console.log(`stopped the cluster in ${o.dir}`);
  });

/**
 * Runs one node in this process against any NATS cluster (README "Security", node options):
 * the rest of the command line goes to the node's own options (`nodes/node-options.ts`).
 */
function nodeCommand(
  parent: Command,
  name: string,
  script: string,
  description: string,
  isDefault = false,
): void {
  parent
    .command(name, { isDefault })
    .description(description)
    .helpOption(false)
    .allowUnknownOption()
    .allowExcessArguments()
    .argument(
      "[options...]",
      "the node's options (--id, --servers, --config, --credentials, ...; or SLUICE_* variables)",
    )
    .action(async (args: string[]) => {
      process.argv = [process.argv[0]!, script, ...args];
      await import(pathToFileURL(script).href);
    });
}

const worker = program
  .command("worker")
  .description("run a worker node (options or SLUICE_* variables), or add or remove one of a local cluster");
nodeCommand(
  worker,
  "run",
  workerScript,
  "run a worker node against any NATS cluster (the default: `sluice worker --id w1 --servers ...`)",
  true,
);
nodeCommand(program, "coordinator", coordinatorScript, "run a coordinator node against any NATS cluster");

program
  .command("provision")
  .description(
    "create a config's streams and buckets on any NATS cluster (admin credentials), or say what differs from a live stream instead of changing its layout",
  )
  .addOption(
    new Option("--servers <urls>", "comma-separated NATS URLs").env("SLUICE_SERVERS").makeOptionMandatory(),
  )
  .addOption(new Option("--config <file>", "cluster config (YAML or JSON)").env("SLUICE_CONFIG"))
  .addOption(new Option("--credentials <file>", "the admin's credentials file").env("SLUICE_CREDENTIALS"))
  .addOption(
    new Option("--user <user>", "NATS user (password from SLUICE_PASSWORD or --password-file)").env(
      "SLUICE_USER",
    ),
  )
  .addOption(
    new Option("--password-file <file>", "file holding the user's password").env("SLUICE_PASSWORD_FILE"),
  )
  .addOption(new Option("--tls-ca <file>", "CA certificate (PEM) of the servers' TLS").env("SLUICE_TLS_CA"))
  .addOption(
    new Option("--tls-cert <file>", "client certificate (PEM), if the servers verify clients").env(
      "SLUICE_TLS_CERT",
    ),
  )
  .addOption(new Option("--tls-key <file>", "the client certificate's key (PEM)").env("SLUICE_TLS_KEY"))
  .option("--replicas <n>", "stream and bucket replicas (at most each pipeline's own)", int("--replicas"), 3)
  .action(
    async (o: {
      servers: string;
      config?: string;
      credentials?: string;
      user?: string;
      passwordFile?: string;
      tlsCa?: string;
      tlsCert?: string;
      tlsKey?: string;
      replicas: number;
    }) => {
      const cfg = loadConfigFile(o.config);
      const password = process.env.SLUICE_PASSWORD;
      const auth = credentialsFrom("admin", { ...o, ...(password === undefined ? {} : { password }) });
      const nc = await connectNats({
        servers: o.servers.split(",").filter(Boolean),
        name: "sluice-provision",
        auth,
        tls: tlsFrom(o),
      });
      try {
        // Config changes are recorded in the audit stream as this command, with the admin's user.
        await provision(nc, cfg, o.replicas, commandActor("admin", auth?.user));
        await checkCheckpointsAgainstStreams(nc, cfg);
      } finally {
        await nc.close();
      }
      const names = cfg.pipelines.map(
        (p) => `${p.name} (${[...inputStreams(p).keys()].length} input stream(s))`,
      );
      console.log(`provisioned: ${names.join(", ")}; dead-letter streams and the buckets are in place`);
    },
  );
nodeCommand(program, "sink", sinkScript, "run the SQLite sink node against any NATS cluster");
worker
  .command("add")
  .option("--dir <dir>", "cluster directory", ".sluice")
  .option("--id <id>", "worker id (default: next free wN)")
  .option("--capacity <n>", "relative shard capacity", int("--capacity"), 1)
  .action((o: { dir: string; id?: string; capacity: number }) => {
    const w = addWorker(o.dir, o.id, o.capacity);
    console.log(`started worker ${w.id} (pid ${w.pid})`);
  });
worker
  .command("remove")
  .requiredOption("--id <id>", "worker id")
  .option("--dir <dir>", "cluster directory", ".sluice")
  .action(async (o: { dir: string; id: string }) => {
    await removeWorker(o.dir, o.id);
    console.log(`worker ${o.id} drained and stopped`);
  });

program
  .command("restart")
  .description(
    "start a listed process again (stopping it first if it runs): nats node, sink, coordinator or worker",
  )
  .requiredOption("--id <id>", "process id from cluster.json (n1, s1, c1, w1, ...)")
  .option("--dir <dir>", "cluster directory", ".sluice")
  .option("--kill", "stop it with SIGKILL instead of a graceful SIGTERM")
  .option("--faketime <offset>", "run it with a skewed wall clock (libfaketime offset, e.g. +30s)")
  .action(async (o: { dir: string; id: string; kill?: boolean; faketime?: string }) => {
    const p = await restartProcess(o.dir, o.id, {
      kill: !!o.kill,
      ...(o.faketime ? { faketime: o.faketime } : {}),
    });
    console.log(`started ${p.id} (pid ${p.pid})${o.faketime ? ` with clock offset ${o.faketime}` : ""}`);
  });

program
  .command("ps")
  .description("the processes of a local cluster and whether each runs")
  .option("--dir <dir>", "cluster directory", ".sluice")
  .option("--json", "JSON output")
  .action((o: { dir: string; json?: boolean }) => {
    const c = readClusterFile(o.dir);
    const rows = [
      ...c.nats.map((p) => ({ role: "nats", ...p })),
      ...(c.sinks ?? []).map((p) => ({ role: "sink", ...p })),
      ...c.coordinators.map((p) => ({ role: "coordinator", ...p })),
      ...c.workers.map((p) => ({ role: "worker", ...p })),
    ].map((p) => ({ ...p, running: isOurProcess(p.pid, c.dir) }));
    if (o.json) console.log(JSON.stringify(rows, null, 2));
    else
      for (const p of rows)
        console.log(
          `${p.role.padEnd(12)} ${p.id.padEnd(6)} pid ${String(p.pid).padEnd(8)} ${p.running ? "running" : "stopped"}`,
        );
  });

program
  .command("load")
  .description("publish N records with unique ids, logging every confirmation")
  .option("--dir <dir>", "cluster directory", ".sluice")
  .option("--pipeline <p>", "pipeline", "demo")
  .requiredOption("--count <n>", "records", int("--count"))
  .option("--rate <r>", "records per second (0: unlimited)", int("--rate"), 0)
  .requiredOption("--ack-log <file>", "one JSON line per publish: {id, status, seq}")
  .option("--keys <n>", "distinct keys", int("--keys"), 1000)
  .option(
    "--stall-timeout <ms>",
    "stop when records have waited this long with no PubAck (0: never)",
    int("--stall-timeout"),
    30_000,
  )
  .action(
    async (o: {
      dir: string;
      pipeline: string;
      count: number;
      rate: number;
      ackLog: string;
      keys: number;
      stallTimeout: number;
    }) => {
      const c = readClusterFile(o.dir);
      const nc = await connectProducer(c, pipelineOf(readClusterConfig(c), o.pipeline), "sluice-load");
      // A publish span per record, exported only when OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT is set
      // (imported here: the OpenTelemetry SDK is not worth loading for the other commands).
      const { startTelemetry } = await import("../../shared/telemetry/telemetry.js");
      const telemetry = startTelemetry({ serviceName: "sluice-load", nodeId: `load-${process.pid}` });
      // Ctrl-C (or SIGTERM) stops sending and waits for the records in flight, so the ack log
      // names every record that reached the stream; a second one stops waiting and logs those
      // still in flight as timed out. Either way `verify` finds no record it was not told of.
      const abandon = new AbortController();
      const interrupt = onInterrupt(
        "sluice load: interrupted; confirming the records in flight (again to stop waiting)",
        "sluice load: not waiting; the records still in flight are logged as timed out",
        () => abandon.abort(),
      );
      try {
        // On a terminal, a progress line redrawn in place (stderr, so stdout keeps the summary).
        const tty = process.stderr.isTTY;
        let shown = 0;
        const progress = (p: LoadProgress): void => {
          shown = Date.now();
          process.stderr.write(
            `\rsent ${p.sent}/${o.count}  acked ${p.acked}  failed ${p.failed}  timed out ${p.timeout}   `,
          );
        };
        const s = await runLoad(nc, {
          ...o,
          keys: Math.max(1, o.keys),
          stallMs: o.stallTimeout,
          signal: interrupt.signal,
          abandonSignal: abandon.signal,
          ...(tty ? { onProgress: (p: LoadProgress) => Date.now() - shown >= 500 && progress(p) } : {}),
        });
        if (tty && shown > 0) {
          progress(s);
          process.stderr.write("\n");
        }
        console.log(
          `published ${s.sent}: ${s.acked} acked, ${s.failed} failed, ${s.timeout} timed out in ${(s.elapsedMs / 1000).toFixed(1)} s (${Math.round((s.sent * 1000) / Math.max(1, s.elapsedMs))} rec/s)`,
        );
        if (s.stopped === "stalled")
          throw new SluiceError(
            ErrorCode.Unavailable,
            `load: no PubAck for ${o.stallTimeout} ms; stopped after sending ${s.sent} of ${o.count} records; those still waiting are logged as timed out (stored or not, verify counts neither as lost nor as unexpected)`,
          );
      } finally {
        interrupt.dispose();
        await nc.close();
        await telemetry.shutdown();
      }
    },
  );

program
  .command("verify")
  .description("compare an ack log with the sink: lost, duplicated, unexpected")
  .option("--dir <dir>", "cluster directory", ".sluice")
  .option("--pipeline <p>", "pipeline", "demo")
  .requiredOption("--ack-log <file>", "ack log written by 'sluice load'")
  .option("--json", "JSON output")
  .action(async (o: { dir: string; pipeline: string; ackLog: string; json?: boolean }) => {
    const c = readClusterFile(o.dir);
    const nc = await connectCluster(c, "reader", "sluice-verify");
    const sink = openSinkInspector(c, nc);
    const r = await verify(sink, o.pipeline, o.ackLog).finally(async () => {
      await sink.close();
      await nc.close();
    });
    console.log(o.json ? JSON.stringify(r, null, 2) : formatVerify(r));
    if (!r.ok) process.exitCode = 1;
  });

program
  .command("status")
  .description("members, coordinator leader, and every shard's owner, epoch, committed sequence and lag")
  .option("--dir <dir>", "cluster directory", ".sluice")
  .option("--json", "JSON output")
  .option("--watch", "live view, redrawn in place, with records/s per shard (Ctrl-C to quit)")
  .option("--interval <ms>", "refresh interval of --watch", int("--interval"), 1000)
  .action(async (o: { dir: string; json?: boolean; watch?: boolean; interval: number }) => {
    if (o.watch && o.json) {
      console.error("sluice: --watch and --json cannot be combined");
      process.exitCode = 1;
      return;
    }
    const c = readClusterFile(o.dir);
    const nc = await connectCluster(c, "reader", "sluice-status");
    const sink = openSinkInspector(c);
    try {
      if (o.watch) {
        await watchStatus(nc, readClusterConfig(c), sink, { intervalMs: Math.max(100, o.interval) });
        return;
      }
      const s = await gatherStatus(nc, readClusterConfig(c), sink);
      console.log(o.json ? JSON.stringify(s, null, 2) : formatStatus(s));
    } finally {
      await sink.close();
      await nc.close();
    }
  });

program
  .command("chaos")
  .description("run a load while injecting faults, heal, drain, then check lost/duplicated/unexpected/order")
  .option("--dir <dir>", "cluster directory (a cluster is started there if none runs)", ".sluice")
  .option("--scenario <s>", `a fault (${FAULTS.join(", ")}), a comma-separated list, or mixed`, "mixed")
  .option("--duration <seconds>", "length of the fault phase", int("--duration"), 180)
  .option("--seed <x>", "seed of the fault schedule", int("--seed"), 1)
  .option("--rate <r>", "records per second", int("--rate"), 1500)
  .option("--port-base <port>", "first NATS client port when a cluster is started", int("--port-base"), 14222)
  .option("--nats-runtime <r>", "when a cluster is started: NATS nodes as process or container", "process")
  .option("--sink <type>", "when a cluster is started: its sink, sqlite|postgres|jetstream")
  .option("--postgres-url <url>", "when a cluster is started with --sink postgres: an existing database")
  .option("--keep", "leave a cluster chaos started running")
  .option("--json", "print the JSON report")
  .action(
    async (o: {
      dir: string;
      scenario: string;
      duration: number;
      seed: number;
      rate: number;
      portBase: number;
      natsRuntime: string;
      sink?: string;
      postgresUrl?: string;
      keep?: boolean;
      json?: boolean;
    }) => {
      try {
        parseScenario(o.scenario);
      } catch (err) {
        throw new InvalidArgumentError((err as Error).message);
      }
      const interrupt = onInterrupt(
        `sluice chaos: interrupted; healing the fault${o.keep ? "" : " and stopping the cluster it started"} (again to exit at once)`,
        "sluice chaos: exiting; a cluster it started may still run: npx sluice down",
      );
      try {
        const report = await runChaos({
          dir: o.dir,
          scenario: o.scenario,
          durationS: o.duration,
          seed: o.seed,
          rate: o.rate,
          portBase: o.portBase,
          natsRuntime: o.natsRuntime === "container" ? "container" : "process",
          ...sinkOptions(o),
          keep: !!o.keep,
          log: o.json ? (l) => console.error(l) : (l) => console.log(l),
          interrupt,
        });
        console.log(o.json ? JSON.stringify(report, null, 2) : formatChaos(report));
        process.exitCode = report.ok ? 0 : 1;
      } catch (err) {
        if (!(err instanceof Interrupted)) throw err;
        console.error("sluice chaos: interrupted: no verdict");
        process.exitCode = 130;
      } finally {
        interrupt.dispose();
      }
    },
  );

program
  .command("demo")
  .description(
    "local cluster + 100k records + a SIGKILLed worker + a new worker, then the exactly-once check",
  )
  .option("--dir <dir>", "cluster directory (wiped first)", ".sluice-demo")
  .option("--count <n>", "records (default 100,000; 40,000 with --merge, half per branch)", int("--count"))
  .option("--rate <r>", "records per second", int("--rate"), 5_000)
  .option("--port-base <port>", "first NATS client port", int("--port-base"), 14222)
  .option("--sink <type>", "where the demo commits: sqlite|postgres|jetstream", "sqlite")
  .option("--postgres-url <url>", "with --sink postgres: an existing database (default: a private server)")
  .option(
    "--merge",
    "two branches (crm, billing) merged into 'customers' by policy latest, with late records; checks the merge too",
  )
  .option("--seed <x>", "with --merge: seed of the records' keys and event times", int("--seed"), 1)
  .option("--keep", "leave the cluster running afterwards")
  .action(
    async (o: {
      dir: string;
      count?: number;
      rate: number;
      portBase: number;
      sink?: string;
      postgresUrl?: string;
      merge?: boolean;
      seed: number;
      keep?: boolean;
    }) => {
      if (o.merge && o.sink === "jetstream")
        throw new InvalidArgumentError("--merge needs a database sink: --sink sqlite or postgres");
      const interrupt = onInterrupt(
        `[demo] interrupted; ${o.keep ? "stopping the load" : "stopping the load and the cluster"} (again to exit at once)`,
        `[demo] exiting; the cluster may still run: npx sluice down --dir ${o.dir}`,
      );
      const opts = {
        dir: o.dir,
        count: o.count ?? (o.merge ? 40_000 : 100_000),
        rate: o.rate,
        portBase: o.portBase,
        ...sinkOptions(o),
        keep: !!o.keep,
        interrupt,
      };
      try {
        const ok = o.merge ? await runMergeDemo({ ...opts, seed: o.seed }) : await runDemo(opts);
        process.exitCode = interrupt.signal.aborted ? 130 : ok ? 0 : 1;
      } finally {
        interrupt.dispose();
      }
    },
  );

addSchemaCommands(program);
addAuditCommands(program);
addRefCommands(program);
addDlqCommands(program);
addMergeCommands(program);

const configCmd = program
  .command("config")
  .description("the config file: check it without starting anything");
configCmd
  .command("check")
  .description("validate a config file (YAML or JSON); errors name the file, line and column")
  .argument("<file>", "config file")
  .action((file: string) => {
    const cfg = loadConfigFile(file);
    const pipelines = cfg.pipelines.map(
      (p) => `${p.name} (${p.shards} shards, sink ${describeSink(sinkOf(cfg, p))})`,
    );
    console.log(`${file}: ok; pipelines: ${pipelines.join(", ")}`);
  });
configCmd
  .command("permissions")
  .description(
    "print the NATS server's accounts block for a config: account SLUICE, one user per role with least privilege",
  )
  .argument("[file]", "config file (default: the built-in config)")
  .action((file: string | undefined) => {
    const cfg = loadConfigFile(file);
    // Placeholders: the operator puts each role's password, or its bcrypt hash (`nats server passwd`).
    const passwords = Object.fromEntries(Roles.map((r) => [r, `<${r} password or bcrypt hash>`])) as Record<
      Role,
      string
    >;
    const mappings = cfg.pipelines
      .filter((p) => p.streams === "per-shard")
      .map((p) => partitionMapping(p.name, p.shards));
    process.stdout.write(natsAccountsBlock(cfg, passwords, mappings));
  });

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (isSluiceError(err)) {
    console.error(`sluice: ${err.message} [${err.code}]`);
  } else {
    console.error(`sluice: ${(err as Error).stack ?? String(err)}`);
  }
  process.exitCode = 1;
}
