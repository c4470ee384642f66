import { deepEqual, ok, rejects } from "@std/assert";
import { startRunHost } from "./host.ts";
import { trainerBehavior, type TrainerEvent } from "./trainer.ts";
import { engineSettings } from "./run_settings.ts";

Deno.test("a host whose supervision tree fails ends its run: monitor.done rejects with the reason", async () => {
  // No trainers: no round ever closes, so only the failure can end the wait.
  const host = await startRunHost({
    run: "host-test",
    config: "tiny",
    rounds: 3,
    innerSteps: 2,
    outer: { lr: 1, momentum: 0 },
    emit: () => {},
  });
  try {
    const root = host.system.ref(`${host.system.node}/run`);
    await host.system.stop(root, { reason: new Error("gave up") });
    await rejects(host.monitor.done, /Run stopped: its supervision tree failed \(Error: gave up\)/);
  } finally {
    await host.shutdown();
  }
});

Deno.test({
  name:
    "a trainer that joins after the last round closed is told the run is over, and fetches nothing",
  sanitizeOps: false, // Worker termination settles its ops after the test's end
  async fn() {
    const settings = {
      run: "host-late",
      config: "tiny",
      rounds: 1,
      innerSteps: 2,
      outer: { lr: 1, momentum: 0 },
    };
    const host = await startRunHost({
      ...settings,
      localTrainers: 1,
      emit: () => {},
    });
    const events: TrainerEvent[] = [];
    const over = Promise.withResolvers<void>();
    try {
      await host.monitor.done;
      await host.system.spawn(
        trainerBehavior({
          run: settings.run,
          id: "host/late",
          tracker: host.trackerPath,
          engine: engineSettings(settings),
          dataShards: 2,
          innerSteps: settings.innerSteps,
          onEvent: (e) => {
            events.push(e);
            if (e.type === "run_over") over.resolve();
          },
        }),
        { name: "late", shutdownMs: 5000 },
      );
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        over.promise,
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error("no run_over in 60 s")), 60_000);
        }),
      ]).finally(() => clearTimeout(timer));
      const said = events.filter((e) => e.type === "run_over");
      deepEqual(said, [{ type: "run_over", trainer: "host/late", round: 1, rounds: 1 }]);
      ok(!events.some((e) => e.type === "log" && /start state/.test(e.message)));
    } finally {
      await host.shutdown();
    }
  },
});
