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
import { parseArgs } from "@std/cli";
import { FAULT_KINDS, type FaultKind } from "./_fault_inject.ts";
import { chaos } from "./_fault_compare.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    seed: { type: "string", default: "1" },
    faults: { type: "string", default: "20" },
    trainers: { type: "string", default: "3" },
    "inner-steps": { type: "string", default: "3" },
    kinds: { type: "string" },
    json: { type: "boolean", default: false },
    verbose: { type: "boolean", default: false },
    help: { type: "boolean", short: "h", default: false },
  },
});

if (values.help) {
  console.log(`Usage: deno task chaos --seed S --faults N [--json] [--trainers 3] [--inner-steps 3]
       [--kinds k1,k2,...] [--verbose]
Fault kinds: ${FAULT_KINDS.join(", ")}`);
  Deno.exit(0);
}

function int(name: string, text: string, min: number): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min) {
    console.error(`Invalid --${name}: ${text} (expected an integer >= ${min})`);
    Deno.exit(2);
  }
  return n;
}

const seed = int("seed", values.seed!, 0);
const faults = int("faults", values.faults!, 0);
const trainers = int("trainers", values.trainers!, 2);
const innerSteps = int("inner-steps", values["inner-steps"]!, 1);
let kinds: FaultKind[] | undefined;
if (values.kinds) {
  kinds = String(values.kinds).split(",").map((k: string) => k.trim()) as FaultKind[];
  const bad = kinds.filter((k) => !(FAULT_KINDS as readonly string[]).includes(k));
  if (bad.length > 0) {
    console.error(`Invalid --kinds: unknown ${bad.join(", ")} (known: ${FAULT_KINDS.join(", ")})`);
    Deno.exit(2);
  }
}

Deno.env.set("XDG_RUNTIME_DIR", Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp");
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
Deno.exit(ok ? 0 : 1);
