/**
 * When faults go in: the seed of a randomized test ({@linkcode faultSeed}),
 * seeded schedules ({@linkcode scheduleRandom}, {@linkcode chaosPlan}), and
 * the injection of a plan into a running fault run group by group, each once
 * the run is whole again ({@linkcode schedule}).
 *
 * @module
 */
import { hashSeed, mulberry32 } from "../transport/rng.ts";
import type { FaultRun } from "./_fault_run.ts";
import {
  FAULT_KINDS,
  type FaultKind,
  type FaultOutcome,
  injectFault,
  type ScheduledFault,
} from "./_fault_inject.ts";

type Timer = ReturnType<typeof setTimeout>;

/** The seed of a randomized test: `FAULT_SEED` when set, else `fallback`; printed either way. */
export function faultSeed(test: string, fallback: number): number {
  const env = Deno.env.get("FAULT_SEED");
  const seed = env !== undefined && env !== "" ? Number(env) : fallback;
  if (!Number.isSafeInteger(seed)) throw new RangeError(`Invalid FAULT_SEED: ${env}`);
  console.log(`${test}: seed ${seed} (replay with FAULT_SEED=${seed})`);
  return seed;
}

/** A seeded PRNG in [0, 1) for fault schedules. */
export function scheduleRandom(seed: number, label: string): () => number {
  return mulberry32(hashSeed(label, seed));
}

/**
 * Injects `faults` into a started run, group by group (faults with the same
 * `afterRound` go together, in the order given): a group goes in once its
 * round closed and the previous group's hold time passed, and (with
 * `healthy`, the default) once a round closed with every trainer
 * contributing, so that each fault hits a whole run. After the last group it
 * waits for one more such round: the run has recovered. Rejects when the run
 * reaches its last rounds first. Resolves with every outcome.
 */
export async function schedule(
  run: FaultRun,
  faults: ScheduledFault[],
  options: { healthy?: boolean } = {},
): Promise<FaultOutcome[]> {
  const groups = new Map<number, ScheduledFault[]>();
  for (const f of faults) groups.set(f.afterRound, [...groups.get(f.afterRound) ?? [], f]);
  const outcomes: FaultOutcome[] = [];
  let next = 0;
  const healthyFrom = async (from: number): Promise<number> => {
    for (let r = from;; r++) {
      if (run.rounds > 0 && r >= run.rounds - 2) {
        throw new Error(
          `The run reached round ${r} of ${run.rounds} before it was whole again; log tail:\n${
            run.lines.slice(-30).join("\n")
          }`,
        );
      }
      await run.roundDone(r, 30_000);
      const ev = run.monitor.rounds[r];
      if (options.healthy === false || ev.contributors.length >= run.trainerPaths.length) return r;
    }
  };
  for (const [afterRound, group] of [...groups].sort((a, b) => a[0] - b[0])) {
    const r = await healthyFrom(Math.max(afterRound, next));
    next = r + 1;
    const shifted = group.map((f) => ({ ...f, afterRound: r, untilRound: f.untilRound ?? r + 2 }));
    outcomes.push(
      ...await Promise.all(shifted.map(async (f) => {
        if (f.delayMs) await run.sleep(f.delayMs);
        // An injection that hangs is a finding too: name it instead of waiting forever.
        let timer: Timer | undefined;
        try {
          return await Promise.race([
            injectFault(run, f),
            new Promise<never>((_, reject) => {
              timer = setTimeout(
                () =>
                  reject(
                    new Error(
                      `Injecting ${f.kind} after round ${f.afterRound} did not finish within 60 s`,
                    ),
                  ),
                60_000,
              );
            }),
          ]);
        } finally {
          clearTimeout(timer);
        }
      })),
    );
    // Network faults run their course before the next group.
    const hold = Math.max(0, ...shifted.map((f) => f.holdMs ?? 0));
    if (hold > 0) await run.sleep(hold);
    next = Math.max(next, run.monitor.rounds.length);
  }
  if (groups.size > 0) await healthyFrom(next);
  return outcomes;
}

/** Kinds of the same class replace each other (one fault layer phase, one partition set). */
const EXCLUSIVE: Partial<Record<FaultKind, string>> = {
  drop_frames: "phase",
  delay_frames: "phase",
  duplicate_frames: "phase",
  reorder_frames: "phase",
  corrupt_frames: "phase",
  partition_node: "partition",
  partition_tracker: "partition",
  bandwidth_limit: "bandwidth",
};

/**
 * A seeded plan of `n` faults of mixed kinds, in groups of one to three
 * injected together (never two of a class that would replace each other).
 * The same seed gives the same plan.
 */
export function chaosPlan(
  seed: number,
  n: number,
  options: {
    kinds?: readonly FaultKind[];
    trainers?: number;
    phaseMs?: number;
    partitionMs?: number;
  } = {},
): ScheduledFault[] {
  const kinds = options.kinds ?? FAULT_KINDS;
  const random = scheduleRandom(seed, "chaos-plan");
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(random() * xs.length)];
  const plan: ScheduledFault[] = [];
  let round = 0;
  while (plan.length < n) {
    const size = Math.min(n - plan.length, 1 + Math.floor(random() * 3));
    const classes = new Set<string>();
    for (let i = 0; i < size; i++) {
      let kind = pick(kinds);
      for (let tries = 0; EXCLUSIVE[kind] && classes.has(EXCLUSIVE[kind]!) && tries < 20; tries++) {
        kind = pick(kinds);
      }
      if (EXCLUSIVE[kind] && classes.has(EXCLUSIVE[kind]!)) continue;
      if (EXCLUSIVE[kind]) classes.add(EXCLUSIVE[kind]!);
      const f: ScheduledFault = {
        afterRound: round,
        kind,
        target: Math.floor(random() * (options.trainers ?? 3)),
      };
      if (EXCLUSIVE[kind] === "partition") f.holdMs = options.partitionMs ?? 4500;
      else if (EXCLUSIVE[kind]) f.holdMs = options.phaseMs ?? 1000;
      if (kind === "aggregator_crash") f.delayMs = Math.floor(random() * 200);
      plan.push(f);
    }
    round++;
  }
  return plan;
}
