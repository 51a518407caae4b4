/**
 * What every part of the benchmark shares: its settings, its log, clusters started and
 * removed under the working directory, and the host's CPU steal measured around each part.
 */
import { mkdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { SluiceConfig } from "../../shared/contract/config.js";
import type { ClusterFile } from "../cli/cluster-file.js";
import { down, type UpOptions, up } from "../cli/local-cluster.js";
import { StealMeter } from "./host-cpu.js";
import type { Rate } from "./publish-rates.js";

export interface BenchSettings {
  quick: boolean;
  /** Working directory; clusters live in folders under it. */
  dir: string;
  portBase: number;
  /** Records per throughput measurement. */
  records: number;
  /** Alternating rounds per throughput comparison (best of each side). */
  rounds: number;
  /** Trials per failover and rebalance figure. */
  trials: number;
  memorySeconds: number;
  /** Records the 16-shard reads read at least. */
  minReadRecords: number;
  /** Keep each stopped cluster's directory. */
  keep: boolean;
}

export const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
export const round = (x: number, d = 3): number => Number(x.toFixed(d));
export const best = (rs: Rate[]): Rate => rs.reduce((a, b) => (b.perSecond > a.perSecond ? b : a));

export class BenchRun {
  private readonly startedAt = Date.now();
  /** CPU steal on the host during each part of the run, % (see `StealMeter`). */
  readonly steal: Record<string, number | null> = {};

  constructor(readonly s: BenchSettings) {}

  log = (line: string): void => {
    console.log(`[bench ${((Date.now() - this.startedAt) / 1000).toFixed(0).padStart(4)} s] ${line}`);
  };

  /** Runs one part of the benchmark, noting the host's CPU steal meanwhile as `steal[part]`. */
  async measuringSteal<T>(part: string, fn: () => Promise<T>): Promise<T> {
    const meter = new StealMeter();
    try {
      return await fn();
    } finally {
      this.steal[part] = meter.percent();
    }
  }

  /** Starts a local cluster in `<dir>/<name>`, runs `fn` on it, and stops and removes it. */
  async withCluster<T>(
    name: string,
    opts: { workers: number; coordinators: number; config: SluiceConfig; portBase: number } & Pick<
      UpOptions,
      "sink" | "postgresUrl" | "insecure"
    >,
    fn: (c: ClusterFile) => Promise<T>,
  ): Promise<T> {
    const d = join(this.s.dir, name);
    rmSync(d, { recursive: true, force: true });
    mkdirSync(d, { recursive: true });
    this.log(`starting cluster '${name}': ${opts.workers} workers, ${opts.coordinators} coordinators`);
    // Plain NATS unless a part asks otherwise: the parts compare sluice with baselines on the
    // same cluster, and the security part measures what TLS and encryption cost.
    const c = await up({ dir: d, insecure: true, ...opts });
    try {
      return await fn(c);
    } finally {
      await down(d).catch(() => undefined);
      if (!this.s.keep) rmSync(d, { recursive: true, force: true });
      this.log(`stopped cluster '${name}'${this.s.keep ? `; kept ${d}` : ""}`);
    }
  }
}
