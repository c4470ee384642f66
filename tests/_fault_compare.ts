/**
 * A faulty run measured against its fault-free twin (same seed, as many
 * rounds): the chaos soak ({@linkcode chaos}) with a seeded plan of mixed
 * faults, and {@linkcode runWithFaults} with a chosen list.
 *
 * @module
 */
import { FaultRun, type FaultRunOptions } from "./_fault_run.ts";
import type { FaultKind, FaultOutcome, ScheduledFault } from "./_fault_inject.ts";
import { chaosPlan, schedule } from "./_fault_plan.ts";

/** The chaos summary's fields. */
export interface ChaosSummary {
  seed: number;
  faults_injected: number;
  fault_kinds: Record<string, number>;
  rounds: number;
  restarts: number;
  restarts_by: Record<string, number>;
  lost_rounds: number;
  divergent_rounds: number;
  rejections: Record<string, number>;
  fault_layer: Record<string, number>;
  unhandled_rejections: number;
  /** The run's invariant violations, each naming its round (a divergent round: whose hashes). */
  violations: string[];
  final_loss: number;
  fault_free_loss: number;
  loss_ratio: number;
  wall_s: number;
}

/**
 * The chaos soak: a network run with `faults` faults of mixed kinds from a
 * seeded plan, then a fault-free run with the same seed for as many rounds;
 * returns the summary.
 */
export async function chaos(
  options: {
    seed: number;
    faults: number;
    trainers?: number;
    innerSteps?: number;
    kinds?: readonly FaultKind[];
    log?: (line: string) => void;
  },
): Promise<ChaosSummary> {
  const t0 = performance.now();
  const trainers = options.trainers ?? 3;
  const plan = chaosPlan(options.seed, options.faults, { kinds: options.kinds, trainers });
  const run = await FaultRun.start({
    seed: options.seed,
    trainers,
    rounds: 0,
    innerSteps: options.innerSteps ?? 3,
    network: true,
    log: options.log,
  });
  let outcomes: FaultOutcome[];
  let final: { loss: number; round: number };
  let summary: Omit<ChaosSummary, "fault_free_loss" | "loss_ratio" | "wall_s">;
  try {
    outcomes = await schedule(run, plan);
    // A few whole rounds after the last fault, then θ is evaluated where it is.
    const from = run.monitor.rounds.length;
    await run.roundDone(from + 3);
    final = await run.evalLoss();
    const emitted = run.monitor.rounds.filter((r) => r.round < final.round);
    const closed = new Set(emitted.filter((r) => r.contributors.length > 0).map((r) => r.round));
    const kinds: Record<string, number> = {};
    for (const o of outcomes) kinds[o.fault.kind] = (kinds[o.fault.kind] ?? 0) + 1;
    const rejections: Record<string, number> = {};
    for (const r of run.rejections) rejections[r.reason] = (rejections[r.reason] ?? 0) + 1;
    summary = {
      seed: options.seed,
      faults_injected: outcomes.length,
      fault_kinds: kinds,
      rounds: final.round,
      restarts: Object.values(run.restarts).reduce((a, b) => a + b, 0),
      restarts_by: { ...run.restarts },
      lost_rounds: final.round - closed.size,
      divergent_rounds: run.divergentRounds().filter((r) => r < final.round).length,
      rejections,
      fault_layer: run.faults!.actionCounts(),
      unhandled_rejections: run.unhandled.length,
      violations: run.violations(),
      final_loss: Math.round(final.loss * 10_000) / 10_000,
    };
    if (summary.violations.length > 0) {
      options.log?.(`invariant violations:\n${summary.violations.join("\n")}`);
    }
  } finally {
    await run.close();
  }
  options.log?.(`fault-free run with seed ${options.seed} for ${final.round} rounds`);
  const clean = await FaultRun.start({
    seed: options.seed,
    trainers,
    rounds: final.round,
    innerSteps: options.innerSteps ?? 3,
    network: true,
  });
  let cleanLoss: number;
  try {
    await clean.roundDone(final.round - 1, 600_000);
    cleanLoss = (await clean.evalLoss()).loss;
  } finally {
    await clean.close();
  }
  return {
    ...summary,
    fault_free_loss: Math.round(cleanLoss * 10_000) / 10_000,
    loss_ratio: Math.round(final.loss / cleanLoss * 10_000) / 10_000,
    wall_s: Math.round((performance.now() - t0) / 100) / 10,
  };
}

/** What {@linkcode runWithFaults} found. */
export interface FaultRunResult {
  /** The faulty run (closed). */
  run: FaultRun;
  /** What each injected fault led to. */
  injected: FaultOutcome[];
  /** θ's evaluation loss at the end of the faulty run, and its round. */
  final: { loss: number; round: number };
  /** The fault-free run's evaluation loss at the same round, same seed. */
  cleanLoss: number;
  /** The fault-free run (closed). */
  clean: FaultRun;
}

/**
 * Runs `faults` on an unbounded run until the run is whole again plus 15
 * rounds, evaluates θ where it is (round R), then runs the same seed without
 * faults for R rounds and evaluates it too.
 */
export async function runWithFaults(
  options: Omit<FaultRunOptions, "rounds">,
  faults: ScheduledFault[],
): Promise<FaultRunResult> {
  const run = await FaultRun.start({ ...options, rounds: 0 });
  let injected: FaultOutcome[];
  let final: { loss: number; round: number };
  try {
    injected = await schedule(run, faults);
    // Some whole rounds after the last fault: both runs leave the steep start of the curve.
    await run.roundDone(run.monitor.rounds.length + 15);
    final = await run.evalLoss();
  } finally {
    await run.close();
  }
  const clean = await FaultRun.start({ ...options, rounds: final.round });
  let cleanLoss: number;
  try {
    await clean.roundDone(final.round - 1, 300_000);
    cleanLoss = (await clean.evalLoss()).loss;
  } finally {
    await clean.close();
  }
  return { run, injected, final, cleanLoss, clean };
}
