/**
 * The seeded chaos soak: `deno task chaos --seed S --faults N [--json]`.
 *
 * Starts a run of one actor system per node (tracker node, host with the
 * aggregator, trainer nodes, trainers in Workers on WebGPU) joined by real
 * WebSockets through the transport's seeded fault layer, injects N faults of
 * mixed kinds from a plan drawn from the seed (crashes of every role, Worker
 * exits, GPU device loss, hostile updates, frame faults, partitions,
 * bandwidth limits, hostile peers), then runs the same seed without faults
 * for as many rounds, and prints a JSON summary: faults_injected,
 * fault_kinds, rounds, restarts, lost_rounds, divergent_rounds, final_loss,
 * fault_free_loss (and more). Exits 1 when a round was lost or diverged, or
 * the final loss is more than 5% off the fault-free run's.
 *
 * @module
 */
import { type Command, intFlag, runCommand, UsageError } from "../kernels/cli.ts";
import { FAULT_KINDS, type FaultKind } from "./_fault_inject.ts";
import { chaos } from "./_fault_compare.ts";

/** The command line of `deno task chaos`. */
export const CHAOS_COMMAND = {
  prog: "chaos",
  usage: "deno task chaos --seed S --faults N [flags]",
  about: `Runs a seeded chaos soak: N faults of mixed kinds injected into a networked run, then the
same seed without faults; prints a JSON summary and exits 1 when a round was lost or
diverged, or the final loss is more than 5% off the fault-free run's.`,
  flags: {
    seed: { value: "S", help: "the seed of the fault plan and the run (default 1)" },
    faults: { value: "N", help: "faults to inject (default 20)" },
    trainers: { value: "N", help: "trainer nodes (default 3, at least 2)" },
    "inner-steps": { value: "H", help: "inner steps per round (default 3)" },
    kinds: {
      value: "LIST",
      help: `fault kinds to draw from, comma-separated (default all):\n${FAULT_KINDS.join(", ")}`,
    },
    json: { type: "boolean", help: "the summary as one JSON line" },
    verbose: {
      type: "boolean",
      help: "print every line of the harness's log (and a stack trace on an error)",
    },
  },
} as const satisfies Command;

await runCommand(CHAOS_COMMAND, Deno.args, async (values) => {
  const seed = intFlag("seed", values.seed, 0) ?? 1;
  const faults = intFlag("faults", values.faults, 0) ?? 20;
  const trainers = intFlag("trainers", values.trainers, 2) ?? 3;
  const innerSteps = intFlag("inner-steps", values["inner-steps"]) ?? 3;
  let kinds: FaultKind[] | undefined;
  if (values.kinds) {
    kinds = values.kinds.split(",").map((k: string) => k.trim()) as FaultKind[];
    const bad = kinds.filter((k) => !(FAULT_KINDS as readonly string[]).includes(k));
    if (bad.length > 0) {
      throw new UsageError(
        `Invalid --kinds: unknown ${bad.join(", ")} (known: ${FAULT_KINDS.join(", ")})`,
      );
    }
  }
  console.error(
    `chaos: seed ${seed}, ${faults} faults, ${trainers} trainers (replay: --seed ${seed})`,
  );
  const summary = await chaos({
    seed,
    faults,
    trainers,
    innerSteps,
    kinds,
    log: (line) => {
      if (values.verbose) console.error(line);
      else if (line.includes("fault ") || line.includes("violation")) console.error(line);
    },
  });
  const ok = summary.lost_rounds === 0 && summary.divergent_rounds === 0 &&
    summary.unhandled_rejections === 0 && Math.abs(summary.loss_ratio - 1) <= 0.05;
  if (values.json) console.log(JSON.stringify({ ...summary, ok }));
  else console.log(JSON.stringify({ ...summary, ok }, null, 2));
  return ok ? 0 : 1;
});
