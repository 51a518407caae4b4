/**
 * Part 4 of the benchmark: what fsync before every PubAck costs the producer. The same records
 * go to an R3 pipeline on a cluster whose servers write lazily (`durability: replicated`, the
 * default) and on one whose servers fsync each write (`durability: fsync`, `sync_interval:
 * always`), one after the other in the same run; best of a few rounds each.
 */
import { connectForPublishing } from "../../shared/adapters/nats/connection.js";
import { parseConfig } from "../../shared/contract/config.js";
import { type BenchRun, best } from "./bench-run.js";
import { makeRecords, producerRate, type Rate } from "./publish-rates.js";

export interface DurabilityResult {
  replicated: Rate;
  fsync: Rate;
}

async function producerOn(
  run: BenchRun,
  durability: "replicated" | "fsync",
  portBase: number,
): Promise<Rate> {
  const config = parseConfig({ pipelines: [{ name: "bench_d", shards: 16, replicas: 3, durability }] });
  return run.withCluster(
    `durability-${durability}`,
    { workers: 0, coordinators: 0, config, portBase },
    async (c) => {
      const nc = await connectForPublishing({
        servers: c.nats.map((n) => n.url),
        name: "sluice-bench-durability",
        pipeline: config.pipelines[0]!,
      });
      try {
        const rates: Rate[] = [];
        for (let r = 0; r < run.s.rounds; r++)
          rates.push(await producerRate(nc, "bench_d", makeRecords(`${durability}${r}`, run.s.records)));
        return best(rates);
      } finally {
        await nc.close();
      }
    },
  );
}

export function measureDurability(run: BenchRun): Promise<DurabilityResult> {
  return run.measuringSteal("durability", async () => {
    const replicated = await producerOn(run, "replicated", run.s.portBase + 30);
    const fsync = await producerOn(run, "fsync", run.s.portBase + 40);
    run.log(
      `producer into R3: ${Math.round(replicated.perSecond)}/s replicated, ${Math.round(fsync.perSecond)}/s with fsync before each PubAck`,
    );
    return { replicated, fsync };
  });
}
