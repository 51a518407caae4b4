/**
 * The ceiling of every end-to-end figure on a cluster: records published by the producer and
 * received by three reader processes exactly as three workers receive them, acked per batch and
 * otherwise dropped (`ack-only-reader.ts`). Against the producer alone into an R3 stream of the
 * same layout, in alternating rounds as the end-to-end figures are, it says how much of the
 * throughput JetStream's delivery itself takes on the cluster's host, so that what decoding,
 * the stages and a sink cost is the distance from this figure down to the end-to-end one.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import type { NatsConnection } from "@nats-io/transport-node";
import type { ClusterFile } from "../cli/cluster-file.js";
import { waitUntil } from "../cli/wait.js";
import type { AckOnlyReaderArgs } from "./ack-only-reader.js";
import { medianRound, publishOnlyRate, withBaselineStream } from "./end-to-end.js";
import { clusterCpu, cpuPerRecord, cpuText, type RoleCpuPerRecord } from "./process-cpu.js";
import { makeRecords, producerRate, type Rate, rate } from "./publish-rates.js";

/** The readers, as many as a local cluster has workers. */
export const ACK_ONLY_READERS = 3;

const readerScript = fileURLToPath(new URL("./ack-only-reader.js", import.meta.url));

interface Reader {
  child: ChildProcess;
  ready: boolean;
  read: number;
  exited: string | null;
}

/** Starts a reader process on `args.mine`, following its `ready` and `read N` lines. */
function startReader(args: AckOnlyReaderArgs): Reader {
  // The workers' young generation (see `node-processes.ts`), so the readers collect as they do.
  const child = spawn(process.execPath, ["--max-semi-space-size=32", readerScript, JSON.stringify(args)], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const r: Reader = { child, ready: false, read: 0, exited: null };
  let rest = "";
  child.stdout!.on("data", (d: Buffer) => {
    const lines = (rest + d.toString()).split("\n");
    rest = lines.pop() ?? "";
    for (const l of lines) {
      if (l === "ready") r.ready = true;
      else if (l.startsWith("read ")) r.read = Number(l.slice(5));
    }
  });
  child.on("exit", (code, signal) => {
    r.exited = `exit ${code ?? signal}`;
  });
  return r;
}

/** Closes each reader's stdin (it deletes its consumers and exits); kills one that lingers. */
async function stopReaders(readers: readonly Reader[]): Promise<void> {
  for (const r of readers) r.child.stdin!.end();
  await waitUntil("the ack-only readers to exit", 10_000, () =>
    readers.every((r) => r.exited !== null) ? true : undefined,
  ).catch(() => {
    for (const r of readers) if (r.exited === null) r.child.kill("SIGKILL");
  });
}

/** The ack-only ceiling beside its baseline: the median round, and every round in order. */
export interface AckOnlyPair {
  publish: Rate;
  ackOnly: Rate;
  rounds: Array<{ publish: number; ackOnly: number }>;
  /** Records sent to the readers before the first round and not measured. */
  warmup: number;
  /** CPU per record and role of the median round's two sides; the readers count as `workers`. */
  cpu: { publish: RoleCpuPerRecord; ackOnly: RoleCpuPerRecord };
}

/**
 * The ack-only ceiling on cluster `c`, measured as the end-to-end figures are: three reader
 * processes on an R3 stream of the pipeline's layout (`withBaselineStream`), started once and
 * warmed up with a fifth of `records` (at least 5,000; V8 compiles their hot path meanwhile, as
 * the workers' is before an end-to-end round), then `rounds` rounds, each the producer alone into
 * an R3 stream of its own, then `records` to the readers, timed from the first publish until
 * they have received every one. The figure is the round with the median ratio (the lower
 * middle of an even count).
 */
export async function publishThenAckOnly(
  c: ClusterFile,
  nc: NatsConnection,
  records: number,
  o: { prefix: string; rounds: number; log: (line: string) => void },
  readers = ACK_ONLY_READERS,
): Promise<AckOnlyPair> {
  return withBaselineStream(nc, `ack_${o.prefix}`, async (p) => {
    const epoch = Math.floor(Date.now() / 1000);
    const started = Array.from({ length: readers }, (_, i) =>
      startReader({
        servers: c.nats.map((n) => n.url),
        pipeline: p.name,
        shards: p.shards,
        mine: Array.from({ length: p.shards }, (_, s) => s).filter((s) => s % readers === i),
        epoch,
      }),
    );
    // waitUntil retries a check that throws, so a reader that died ends a wait as a value.
    const failed = (): string | undefined => started.find((r) => r.exited !== null)?.exited ?? undefined;
    const received = (): number => started.reduce((n, r) => n + r.read, 0);
    let sent = 0;
    /** Sends `count` records to the readers; ms from the first publish until all are received. */
    const send = async (count: number, prefix: string): Promise<number> => {
      const batch = makeRecords(prefix, count);
      sent += count;
      const t0 = performance.now();
      const publishing = producerRate(nc, p.name, batch);
      const end = await waitUntil(
        "the ack-only readers to receive every record",
        300_000,
        () => (failed() ? { failed: failed() } : received() >= sent ? { failed: undefined } : undefined),
        5,
      );
      const ms = performance.now() - t0;
      if (end.failed) throw new Error(`an ack-only reader ended while reading (${end.failed})`);
      await publishing;
      return ms;
    };
    try {
      const opened = await waitUntil("the ack-only readers' consumers", 60_000, () =>
        failed() ? { failed: failed() } : started.every((r) => r.ready) ? { failed: undefined } : undefined,
      );
      if (opened.failed) throw new Error(`an ack-only reader ended before it was ready (${opened.failed})`);
      const warmup = Math.max(5_000, Math.round(records / 5));
      await send(warmup, `${o.prefix}_warm`);
      const pids = started.flatMap((r) => (r.child.pid === undefined ? [] : [{ pid: r.child.pid }]));
      const measured: Array<{ publish: Rate; e2e: Rate; cpu: AckOnlyPair["cpu"] }> = [];
      for (let r = 0; r < Math.max(1, o.rounds); r++) {
        const cpu0 = clusterCpu(c, pids);
        const publish = await publishOnlyRate(nc, records, `${o.prefix}p${r}`);
        const cpu1 = clusterCpu(c, pids);
        const ackOnly = rate(records, await send(records, `${o.prefix}a${r}`));
        const cpu = {
          publish: cpuPerRecord(cpu0, cpu1, records),
          ackOnly: cpuPerRecord(cpu1, clusterCpu(c, pids), records),
        };
        o.log(
          `round ${r + 1}: producer alone ${Math.round(publish.perSecond)}/s; received and acked only by ${readers} readers ${Math.round(ackOnly.perSecond)}/s (${(ackOnly.perSecond / publish.perSecond).toFixed(2)}x); ${cpuText(cpu.ackOnly).replace("workers", "readers")}`,
        );
        measured.push({ publish, e2e: ackOnly, cpu });
      }
      const m = medianRound(measured);
      return {
        publish: m.publish,
        ackOnly: m.e2e,
        rounds: measured.map((x) => ({ publish: x.publish.perSecond, ackOnly: x.e2e.perSecond })),
        warmup,
        cpu: m.cpu,
      };
    } finally {
      await stopReaders(started);
    }
  });
}
