/**
 * The trainer of a node that joined a host's run, as `deno task node --join`
 * (actors/networked.ts) and a browser tab (actors/browser/join.ts) both start
 * it: the options that follow from the run's settings, under a supervisor
 * that restarts it. What differs between the two (the engine's data, the
 * start-state source, the Worker's URL, what happens with the reports) is
 * theirs to add.
 *
 * Browser-bound: it may use no Deno API.
 *
 * @module
 */
import { Supervisor } from "./runtime/supervisor.ts";
import { trainerBehavior, type TrainerOptions } from "./trainer.ts";
import { syncOptions } from "./overlap.ts";
import { engineSettings, type RunSettings } from "./run_settings.ts";
import { MONITOR_NAME } from "./monitor.ts";
import type { ReportCursor } from "./run_protocol.ts";

/** The host's tracker, as a joined node addresses it. */
export const HOST_TRACKER = "host/run/tracker/tracker";

/** What a joined trainer sets itself; the rest follows from the run's settings. */
export type OwnTrainerOptions = Partial<TrainerOptions> & Pick<TrainerOptions, "onEvent">;

/**
 * A supervisor of one trainer at `path` for the host's run (settings, and the
 * resumed round's cursors when the run was resumed); `own` adds or overrides
 * options, `onRestart` hears each restart.
 *
 * @example
 * ```ts ignore
 * const sup = joinedTrainer(settings, info.resume, `${node}/node/trainer`, { onEvent }, log);
 * await system.spawn(sup, { name: "node", shutdownMs: Infinity });
 * ```
 */
export function joinedTrainer(
  settings: RunSettings,
  resume: { round: number; cursors: ReportCursor[] } | undefined,
  path: string,
  own: OwnTrainerOptions,
  onRestart: (restarts: number) => void,
): Supervisor {
  return new Supervisor({
    intensity: 5,
    periodMs: 60_000,
    children: [{
      id: "trainer",
      start: () =>
        trainerBehavior({
          run: settings.run,
          id: path,
          tracker: HOST_TRACKER,
          monitor: `host/${MONITOR_NAME}`,
          engine: engineSettings(settings),
          dataShards: settings.dataShards ?? 16,
          innerSteps: settings.innerSteps,
          ...syncOptions(settings),
          ...(resume ? { resume } : {}),
          ...own,
        }),
    }],
    onEvent: (e) => {
      if (e.type === "restarted") onRestart(e.restarts);
    },
  });
}
