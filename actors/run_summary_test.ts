import { deepEqual, equal, match } from "@std/assert";
import { ActorSystem } from "./runtime/system.ts";
import type { RunHost } from "./host.ts";
import { finalEvaluation } from "./run_summary.ts";
import { textSample } from "../kernels/sample.ts";

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

Deno.test("the final sample is kept only if a trainer could have written it", async () => {
  const system = new ActorSystem({ node: "host" });
  try {
    let answer: unknown = "The end";
    await system.spawn({ receive: () => ({ loss: 2.5, sample: answer }) }, { name: "trainers/0" });
    const logged: string[] = [];
    const host = hostOf(system, logged);
    const sample = textSample({ tokens: 8 });
    const ask = () =>
      finalEvaluation(host, ["host/trainers/0"], { maxWindows: 8, timeoutMs: 5000, sample });
    deepEqual(await ask(), { loss: 2.5, sample: { prompt: "The ", text: "The end" } });
    answer = "x".repeat(9);
    deepEqual(await ask(), { loss: 2.5 });
    answer = undefined;
    deepEqual(await ask(), { loss: 2.5 });
    deepEqual(logged, [
      "final sample from host/trainers/0 ignored: 9 characters for a sample of 8 bytes",
      "final sample from host/trainers/0 ignored: no text (undefined)",
    ]);
  } finally {
    await system.shutdown();
  }
});
