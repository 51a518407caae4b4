/**
 * The share of the host's CPU time stolen from this machine by its hypervisor (`steal` in
 * /proc/stat), over a stretch of a benchmark. On a shared virtual machine it comes and goes:
 * 60–80 % for tens of seconds was seen on the 2-core benchmark machine, and with it every
 * process stalled for up to 3 s at once. Figures measured in such a stretch say more about the
 * host than about sluice, so the benchmark reports the steal next to them.
 */
import { readFileSync } from "node:fs";

interface CpuTimes {
  steal: number;
  total: number;
}

/** The machine's cumulative CPU times (all cores, clock ticks); null where /proc/stat is absent. */
function readCpuTimes(): CpuTimes | null {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n", 1)[0]!;
    // cpu user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already counted in user and nice.
    const f = line.trim().split(/\s+/).slice(1, 9).map(Number);
    if (f.length < 8 || f.some((x) => !Number.isFinite(x))) return null;
    return { steal: f[7]!, total: f.reduce((a, b) => a + b, 0) };
  } catch {
    return null;
  }
}

/** Measures steal from its creation on. */
export class StealMeter {
  private readonly from = readCpuTimes();

  /** Percent of the CPU time since creation that was stolen; null when unknown. */
  percent(): number | null {
    const to = readCpuTimes();
    if (!this.from || !to || to.total <= this.from.total) return null;
    return (100 * (to.steal - this.from.steal)) / (to.total - this.from.total);
  }
}

/** `12 %`, or `unknown`. */
export const stealText = (pct: number | null | undefined): string =>
  pct === null || pct === undefined ? "unknown" : `${pct.toFixed(0)} %`;
