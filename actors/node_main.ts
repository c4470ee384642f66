/**
 * `deno task node`: run a node of a decentralized training run.
 *
 * - no flags: one process hosts a whole run on the embedded default (a
 *   tracker, an aggregator, a keeper slot and several trainers in Workers),
 *   trains for a bounded number of rounds, prints progress and a summary, and
 *   exits 0.
 * - `--host ADDR:PORT --secret S`: hosts a run that other processes join
 *   (`--allow FILE` admits only the listed keys; `--tls-cert/--tls-key`
 *   serve `wss://`).
 * - `--join ws://ADDR:PORT --secret S`: joins a run as a trainer, signing
 *   the handshake with its key (`--key FILE`; `--ca FILE` for `wss://`).
 * - `--resume DIR`: restarts a run (embedded, or with `--host`) from the
 *   newest verified round under DIR, with θ bit for bit, the outer momentum
 *   and the data cursors; it prints the loaded parameters' hash.
 *
 * The embedded run and the host run checkpoint keepers (default 2), each
 * writing its own `<run dir>/keeper-<i>` (run dir: `--run-dir`, default
 * `runs/<run id>`); `<run dir>/latest` points at the newest committed round.
 *
 * Without `--json`, one progress line on stderr (round, loss, trainers,
 * utilization, ETA, newest commit; plain lines when stderr is not a terminal)
 * and the summary on stdout at the end. With `--json`, one JSON object per
 * line: a "round" event per closed round and a last "done" event with the
 * totals.
 *
 * Bad input (a flag, flags that exclude each other, a run directory, data or
 * model shape that cannot be used) ends with one line `node: message` and
 * exit code 2, before anything starts; see kernels/cli.ts.
 *
 * The flags and their checks are in actors/node_args.ts, the printing of
 * the run's events in actors/node_progress.ts; this file reads the input,
 * makes the run directory and starts the run.
 *
 * @module
 */
import { runEmbedded } from "./embedded.ts";
import { runNetworked } from "./networked.ts";
import { engineSettings } from "./run_settings.ts";
import { NODE_COMMAND, type NodeArgs, parseNodeArgs, resumedArgs } from "./node_args.ts";
import { eventPrinter } from "./node_progress.ts";
import { readInput, runCommand, UsageError } from "../kernels/cli.ts";
import { loadCorpus } from "../kernels/corpus.ts";
import { acquireGpu } from "../kernels/device.ts";
import { planModel } from "../kernels/limits.ts";
import { resolvePrecision } from "../kernels/model_options.ts";
import { createModel } from "../kernels/model.ts";
import type { TuneResult, TunerTable } from "../kernels/matmul_tune.ts";
import { loadTuner, saveTuner, tunedEvent, tunedText } from "../kernels/matmul_tune_file.ts";
import { type ResumedRun, resumeRunDir } from "../checkpoint/resume.ts";

/** The flags, and the run directory and data they name, read and checked: failures exit 2. */
async function readNodeInput(argv: string[]) {
  let args = parseNodeArgs(argv);
  let resumed: ResumedRun | undefined;
  if (args.resumeDir !== undefined) {
    resumed = await resumeRunDir(args.resumeDir);
    args = resumedArgs(args, resumed);
    if (args.rounds <= resumed.round) {
      throw new UsageError(
        `Invalid --rounds: ${args.rounds}, the run in ${args.resumeDir} is at round ${resumed.round} ` +
          `(pass --rounds N with N > ${resumed.round} to train on)`,
      );
    }
  }
  // Trainers read the data in their Workers, where a bad path would only restart them.
  if (args.dataPath !== undefined) await loadCorpus({ path: args.dataPath });
  return { args, resumed };
}

/**
 * The run directory, made, with an earlier run's checkpoints moved aside, and
 * the printer that logs to it: the last step before the run starts.
 */
async function openRunDir(args: NodeArgs, resumed: ResumedRun | undefined) {
  const runDir = args.join ? args.runDir : args.runDir ?? args.resumeDir ?? `runs/${args.run}`;
  if (!args.join && args.keepers > 0 && !resumed && runDir) await setAside(runDir);
  let emit;
  try {
    emit = eventPrinter({ json: args.json, runDir, rounds: args.join ? undefined : args.rounds });
  } catch (err) {
    throw new UsageError(
      `Cannot write the run log in ${runDir}: ${err instanceof Error ? err.message : err}`,
    );
  }
  return { runDir, emit };
}

/**
 * Refuses, before any Worker starts, a model this device cannot hold: in a
 * trainer the error would only restart it until its supervisor gives up.
 * The GPU is this process's; one that is missing is a failure (exit 1), a
 * shape too big for it or f16 without `shader-f16` is the flags' fault (exit 2).
 * With `--tune-matmuls` it also measures, on that GPU and before the trainers
 * start (so they do not measure side by side), the shapes the tuning file
 * lacks, writes the file and returns the table the trainers build with.
 */
async function checkModelFits(args: NodeArgs): Promise<TunerTable | undefined> {
  const engine = engineSettings(args);
  const gpu = await acquireGpu();
  try {
    let precision;
    try {
      precision = resolvePrecision(gpu, engine.precision);
      planModel(engine.config, {
        batch: engine.batch,
        gradAccum: engine.gradAccum,
        // The same choices as createModel: CPU adapters use the attention that keeps T·T scratch.
        attentionScratch: gpu.isCpu,
        precision,
      }, gpu.limits);
    } catch (err) {
      throw new UsageError(err instanceof Error ? err.message : String(err));
    }
    const file = args.tuneFile;
    if (file === undefined) return undefined;
    const tuner = await readInput(() => loadTuner(file, { onResult: (r) => tunedLine(args, r) }));
    const model = await createModel(gpu, engine.config, {
      batch: engine.batch,
      gradAccum: engine.gradAccum,
      precision,
      matmulTuner: tuner,
    });
    model.dispose();
    if (tuner.results().length > 0) await saveTuner(file, tuner);
    return tuner.toJSON();
  } finally {
    gpu.destroy();
  }
}

/** One measured shape, as a line on stderr (or a JSON event with `--json`). */
function tunedLine(args: NodeArgs, r: TuneResult): void {
  if (args.json) console.log(JSON.stringify(tunedEvent(r)));
  else console.error(tunedText(r));
}

async function main(argv: string[]): Promise<number> {
  const { args, resumed } = await readInput(() => readNodeInput(argv));
  let matmulTuning: TunerTable | undefined;
  if (!args.join && args.trainers > 0) matmulTuning = await checkModelFits(args);
  else if (args.tuneFile !== undefined) {
    // A joiner learns the model's shape from the host: its trainers measure what the file lacks.
    const file = args.tuneFile;
    matmulTuning = (await readInput(() => loadTuner(file))).toJSON();
  }
  const { runDir, emit } = await readInput(() => openRunDir(args, resumed));
  const duty = args.keeperCpu !== undefined ? { backgroundDuty: args.keeperCpu } : {};
  const checkpoint = !args.join && args.keepers > 0 && runDir
    ? { checkpoint: { dir: runDir, keepers: args.keepers, ...duty } }
    : {};
  const { resumeDir: _, role, keeperCpu: __, tuneFile: ___, ...rest } = args;
  const resume = resumed ? { resume: resumed } : {};
  const tuning = matmulTuning ? { matmulTuning } : {};
  if (args.host || args.join) {
    return await runNetworked({
      ...rest,
      trainers: args.trainers,
      role: role === "keeper" ? "keeper" : "trainer",
      ...(role === "keeper" ? duty : {}),
      ...checkpoint,
      ...resume,
      ...tuning,
    }, emit);
  }
  await runEmbedded({
    ...rest,
    trainers: args.trainers,
    emit,
    ...checkpoint,
    ...resume,
    ...tuning,
  });
  return 0;
}

/** A fresh run does not mix its checkpoints with an older run's: the old ones move aside. */
async function setAside(dir: string): Promise<void> {
  let old = false;
  try {
    for await (const e of Deno.readDir(dir)) {
      if (/^keeper-\d+$|^rounds$|^latest$/.test(e.name)) old = true;
    }
  } catch {
    return; // no directory yet
  }
  if (!old) return;
  const to = `${dir}.${new Date().toISOString().replace(/[:.]/g, "-")}`;
  await Deno.rename(dir, to);
  console.error(`note: ${dir} held an earlier run's checkpoints; moved to ${to}`);
}

if (import.meta.main) {
  await runCommand(NODE_COMMAND, Deno.args, () => main(Deno.args));
}
