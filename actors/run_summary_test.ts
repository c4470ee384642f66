import { deepEqual, equal, match } from "@std/assert";
import { ActorSystem } from "./runtime/system.ts";
import type { RunHost } from "./host.ts";
import { finalEvaluation } from "./run_summary.ts";

/** A host with only what the final evaluation uses: the system and a log. */
function hostOf(system: ActorSystem, logged: string[]): RunHost {
  return { system, monitor: { log: (m: string) => logged.push(m) } } as unknown as RunHost;
}

Deno.test("the final evaluation goes on past a trainer that holds no θ", async () => {
  const system = new ActorSystem({ node: "host" });
  try {
    // Trainer 0 was evicted near the end and holds no θ; trainer 1 has it.
    await system.spawn({
      receive() {
        throw new RangeError("Cannot evaluate: trainer host/trainers/0 holds no θ yet");
      },
    }, { name: "trainers/0" });
    await system.spawn({ receive: () => ({ loss: 2.5 }) }, { name: "trainers/1" });
    const logged: string[] = [];
    const host = hostOf(system, logged);
    const trainers = ["host/trainers/0", "host/trainers/1", "host/trainers/0"];
    deepEqual(await finalEvaluation(host, trainers, { maxWindows: 8, timeoutMs: 5000 }), {
      loss: 2.5,
    });
    equal(logged.length, 1);
    match(logged[0], /final evaluation on host\/trainers\/0 failed: .*holds no θ yet/);
    // No trainer can: NaN, each failure logged once.
    logged.length = 0;
    equal(
      (await finalEvaluation(host, ["host/trainers/0", "host/trainers/0"], {
        maxWindows: 8,
        timeoutMs: 5000,
      })).loss,
      NaN,
    );
    equal(logged.length, 1);
  } finally {
    await system.shutdown();
  }
});
