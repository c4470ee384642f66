/**
 * A whole run in one process ({@linkcode runEmbedded}): the host side, the
 * trainers in Workers, a bounded number of rounds, optional faults injected
 * when a round's event is emitted, and a final evaluation.
 *
 * @module
 */
import { serveDashboard, type ServedDashboard } from "./dashboard/serve.ts";
import { RunHistory } from "./dashboard/history.ts";
import type { TrainerFault } from "./trainer_faults.ts";
import { type HostOptions, type RunHost, startRunHost } from "./host.ts";
import { finalCommit, finalEvaluation, type RunSummary, summarize } from "./run_summary.ts";
import { textSample, type TextSampleSpec } from "../kernels/sample.ts";

/** A fault to inject during an embedded run, when a round's event is emitted. */
export interface RunFault {
  /** Inject after this round's event (i.e. during round + 1). */
  afterRound: number;
  /** "tracker", "aggregator:<i>", "keeper:<i>" or "trainer:<i>". */
  target: string;
  /** What to do. */
  fault: TrainerFault | { type: "crash"; reason: string };
}
/** Options of {@linkcode runEmbedded}. */
export interface EmbeddedOptions extends Omit<HostOptions, "localTrainers"> {
  /** Trainers in this process. */
  trainers: number;
  /** Faults to inject (tests, the chaos suite). */
  faults?: RunFault[];
  /** Validation windows of the final evaluation (default 64). */
  evalWindows?: number;
  /** Give up after this long, ms (default: no limit). */
  timeoutMs?: number;
  /**
   * Serve the dashboard, `/status`, `/events` and `/metrics` at
   * "ADDR:PORT" while the run lasts (default: none; port 0 takes a free one).
   */
  dashboard?: string;
  /**
   * Take a text sample of θ with the evaluations during the run and at the
   * final one (the summary's `final_sample`): the fields given over
   * `DEFAULT_TEXT_SAMPLE` (kernels/sample.ts). Default: none.
   */
  sample?: Partial<TextSampleSpec>;
  /**
   * Evaluate θ during the run after at most every this many rounds, the
   * evaluations paced to 2% of the trainers' inner time (`RunHistory`),
   * each one an "eval" event (default 0: only the final evaluation; 1 with
   * a dashboard).
   */
  evalEvery?: number;
}

function targetPath(host: RunHost, target: string): string {
  if (target === "tracker") return host.trackerPath;
  const [role, i] = target.split(":");
  const list = role === "aggregator"
    ? host.aggregatorPaths
    : role === "keeper"
    ? host.keeperPaths
    : host.trainerPaths;
  const path = list[Number(i)];
  if (!path) throw new RangeError(`Unknown fault target: ${target}`);
  return path;
}

/**
 * Hosts a whole run in this process (tracker, aggregators, trainers in
 * Workers), trains `rounds` rounds, evaluates the final θ on the validation
 * stream and returns the summary. Emits events as it goes.
 *
 * @example Two rounds of the tiny model on two trainers
 * ```ts
 * import { runEmbedded } from "./embedded.ts";
 * import assert from "node:assert/strict";
 * const summary = await runEmbedded({
 *   run: "demo",
 *   config: "tiny",
 *   trainers: 2,
 *   rounds: 2,
 *   innerSteps: 2,
 *   outer: { lr: 0.7, momentum: 0.9 },
 *   evalWindows: 8,
 *   emit: (e) => {
 *     if (e.event === "round") console.log(`round ${e.round}: loss ${e.loss}`);
 *   },
 * });
 * assert.equal(summary.rounds, 2);
 * assert.ok(summary.hashes_equal);
 * ```
 */
export async function runEmbedded(options: EmbeddedOptions): Promise<RunSummary> {
  if (!(options.rounds > 0)) throw new RangeError("Cannot run embedded: rounds must be positive");
  const sample = options.sample ? textSample(options.sample) : undefined;
  const host = await startRunHost({ ...options, localTrainers: options.trainers });
  const { monitor } = host;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let dashboard: ServedDashboard | undefined;
  let history: RunHistory | undefined;
  try {
    if (options.dashboard !== undefined) {
      dashboard = await serveDashboard(host, options.dashboard, {
        evalEvery: options.evalEvery ?? 1,
        sample,
      });
      history = dashboard.history;
      monitor.log(`dashboard on ${dashboard.url}`);
    } else if (options.evalEvery) {
      history = new RunHistory(host, { evalEvery: options.evalEvery, sample });
    }
    for (const f of options.faults ?? []) {
      monitor.roundEmitted(f.afterRound).then(() => {
        const path = targetPath(host, f.target);
        monitor.log(`injecting ${JSON.stringify(f.fault)} into ${path}`, "warn");
        host.system.ref(path).tell(f.fault);
      });
    }
    const timeout = new Promise<never>((_, reject) => {
      if (options.timeoutMs) {
        timer = setTimeout(
          () => reject(new Error(`Run did not finish within ${options.timeoutMs} ms`)),
          options.timeoutMs,
        );
      }
    });
    await Promise.race([monitor.done, timeout]);
    // The trainers of the last view first: they hold the final θ.
    const trainers = [...(monitor.view?.trainers ?? []), ...host.trainerPaths];
    const final = await Promise.race([
      finalEvaluation(host, trainers, {
        maxWindows: options.evalWindows ?? 64,
        timeoutMs: 600_000,
        sample,
        history,
      }),
      timeout,
    ]);
    if (Number.isNaN(final.loss)) {
      throw new Error(
        "Cannot evaluate the final θ: no trainer of the run could (see the warnings)",
      );
    }
    await finalCommit(host, options.rounds);
    const summary = summarize(monitor, {
      run: options.run,
      trainers: options.trainers,
      evalLoss: final.loss,
      sample: final.sample,
      exchange: options.exchange,
      updateExchange: options.updateExchange,
    });
    options.emit({ event: "done", ...summary });
    return summary;
  } finally {
    clearTimeout(timer);
    // A dashboard's close ends its history too.
    await (dashboard ? dashboard.close() : history?.close());
    await host.shutdown();
  }
}
