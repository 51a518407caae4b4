/**
 * How many workers the backlog asks for (README "Autoscaling"), with hysteresis, on the
 * injected clock. The coordinator exports the result (`sluice_desired_workers`) and an
 * autoscaler (a KEDA ScaledObject with a Prometheus trigger) sets the worker count to it.
 *
 * The target of one sample is ceil(backlog / recordsPerWorker), within [minWorkers,
 * maxWorkers]. The count goes up only to a target every sample of the last `scaleUpAfterMs`
 * reached (a burst shorter than that moves nothing), and down only to the highest target of
 * the last `scaleDownAfterMs` (the longer window: a worker added is not taken away as soon as it
 * has cut the backlog, which would make the count flap). Both as Kubernetes' HPA stabilises.
 */

export interface ScalingPolicy {
  /** Backlog one worker is meant to carry, records. */
  recordsPerWorker: number;
  minWorkers: number;
  maxWorkers: number;
  /** How long a higher target must hold before the count goes up to it, ms. */
  scaleUpAfterMs: number;
  /** How long every target must stay lower before the count goes down, ms. */
  scaleDownAfterMs: number;
}

export interface ScalingState {
  /** The count in force. */
  desired: number;
  /** Targets of the samples within the longer window, oldest first (`at`: ms). */
  samples: ReadonlyArray<{ at: number; target: number }>;
}

export const initialScaling = (p: ScalingPolicy): ScalingState => ({ desired: p.minWorkers, samples: [] });

/** The target of one backlog sample. */
export function scalingTarget(backlog: number, p: ScalingPolicy): number {
  const wanted = Math.ceil(Math.max(0, backlog) / p.recordsPerWorker);
  return Math.min(p.maxWorkers, Math.max(p.minWorkers, wanted));
}

/** The state after a backlog sample at `at` (ms; samples come in time order). */
export function scaleStep(s: ScalingState, backlog: number, at: number, p: ScalingPolicy): ScalingState {
  const keepFrom = at - Math.max(p.scaleUpAfterMs, p.scaleDownAfterMs);
  const samples = [...s.samples.filter((x) => x.at >= keepFrom), { at, target: scalingTarget(backlog, p) }];
  // A window counts only once the samples cover it: the first sample alone decides nothing.
  const covers = (windowMs: number): boolean => samples[0]!.at <= at - windowMs;
  const within = (windowMs: number) => samples.filter((x) => x.at >= at - windowMs).map((x) => x.target);
  let desired = s.desired;
  const up = Math.min(...within(p.scaleUpAfterMs));
  if (up > desired && covers(p.scaleUpAfterMs)) desired = up;
  const down = Math.max(...within(p.scaleDownAfterMs));
  if (down < desired && covers(p.scaleDownAfterMs)) desired = down;
  return { desired: Math.min(p.maxWorkers, Math.max(p.minWorkers, desired)), samples };
}

/** Each pipeline's backlog, its shards' lag summed; null while any of its shards' is unknown. */
export function backlogByPipeline(
  shards: ReadonlyArray<{ pipeline: string; lag: number | null }>,
): Map<string, number | null> {
  const out = new Map<string, number | null>();
  for (const s of shards) {
    const sum = out.has(s.pipeline) ? out.get(s.pipeline)! : 0;
    out.set(s.pipeline, sum === null || s.lag === null ? null : sum + s.lag);
  }
  return out;
}

/** The policy a config's `autoscale` names. */
export const scalingPolicy = (a: {
  recordsPerWorker: number;
  minWorkers: number;
  maxWorkers: number;
  scaleUpAfter: number;
  scaleDownAfter: number;
}): ScalingPolicy => ({
  recordsPerWorker: a.recordsPerWorker,
  minWorkers: a.minWorkers,
  maxWorkers: a.maxWorkers,
  scaleUpAfterMs: a.scaleUpAfter,
  scaleDownAfterMs: a.scaleDownAfter,
});
