/**
 * Restarting a whole run from disk (`deno task node --resume DIR`): the
 * newest round of DIR that verifies, with θ bit for bit, the outer momentum
 * and residual, the round, the view and the data cursors (actors/restore.ts
 * cuts it into the aggregators' per-shard states).
 *
 * Run as a program, it prints what it would resume from as one JSON line:
 * `deno run -A checkpoint/resume.ts runs/<name>`.
 *
 * @module
 */
import type { GptConfig } from "../kernels/config.ts";
import { CheckpointStore, type RoundState, type SkippedRound } from "./store.ts";

/** What a run resumes from. */
export interface ResumedRun extends RoundState {
  /** The round's folder. */
  dir: string;
  /** θ's hash as trainers report it (16 hex digits of sha256). */
  paramsHash: string;
  /** θ's full sha256. */
  paramsSha256: string;
  /** Newer rounds skipped as corrupt, torn or incomplete, with the reason. */
  skipped: SkippedRound[];
}

/** Raised when a run directory holds no round that verifies. */
export class NothingToResumeError extends Error {
  override name = "NothingToResumeError";
}

/** Options of {@linkcode resumeRun}. */
export interface ResumeOptions {
  /** The model shape the run expects; a checkpoint of another shape is refused. */
  expect?: GptConfig;
  /** Told about each round skipped (default: a warning on stderr). */
  onSkip?: (skipped: SkippedRound) => void;
}

/**
 * Loads the newest verified round of a run directory.
 *
 * @throws {NothingToResumeError} when no round verifies (each skipped one named)
 *
 * @example Resume from the newest committed round of a store
 * ```ts
 * import { resumeRun } from "./resume.ts";
 * import { CheckpointStore } from "./store.ts";
 * import { getConfig } from "../kernels/config.ts";
 * import { initParams } from "../kernels/init.ts";
 * import assert from "node:assert/strict";
 * const dir = await Deno.makeTempDir();
 * const config = getConfig("tiny").model;
 * const params = initParams(config, 1);
 * const momentum = new Float32Array(params.length);
 * await new CheckpointStore(dir).commit({ run: "demo", round: 4, config, params, momentum });
 * const resumed = await resumeRun(dir, { expect: config });
 * assert.equal(resumed.round, 4);
 * assert.deepEqual(resumed.params, params);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function resumeRun(dir: string, options: ResumeOptions = {}): Promise<ResumedRun> {
  const store = new CheckpointStore(dir);
  const onSkip = options.onSkip ??
    ((s: SkippedRound) => console.error(`warn: skipping checkpoint round ${s.round}: ${s.reason}`));
  const latest = await store.loadLatest({ expect: options.expect, onSkip });
  if (!latest) {
    const rounds = await store.rounds();
    throw new NothingToResumeError(
      rounds.length === 0
        ? `Cannot resume: ${dir} holds no committed round (no ${dir}/rounds/<round>)`
        : `Cannot resume: no round of ${dir} verifies (tried ${rounds.reverse().join(", ")})`,
    );
  }
  return {
    ...latest.state,
    dir: latest.dir,
    paramsHash: latest.manifest.params_hash,
    paramsSha256: latest.manifest.params_sha256,
    skipped: latest.skipped,
  };
}

/**
 * Loads the newest verified round of a run directory as `deno task node`
 * writes it: DIR itself when it is one store (`DIR/rounds`), else the newest
 * round that verifies among its keepers' stores (`DIR/keeper-<i>`), so that a
 * keeper that lagged or wrote a corrupt round does not decide.
 *
 * @throws {NothingToResumeError} when no store of DIR holds a round that verifies
 */
export async function resumeRunDir(
  dir: string,
  options: ResumeOptions = {},
): Promise<ResumedRun> {
  const isDir = async (p: string) => {
    try {
      return (await Deno.stat(p)).isDirectory;
    } catch {
      return false;
    }
  };
  if (await isDir(`${dir}/rounds`)) return await resumeRun(dir, options);
  const stores: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      if (e.isDirectory && /^keeper-\d+$/.test(e.name)) stores.push(`${dir}/${e.name}`);
    }
  } catch (err) {
    throw new NothingToResumeError(
      `Cannot resume: ${dir} cannot be read: ${err instanceof Error ? err.message : err}`,
    );
  }
  if (stores.length === 0) {
    throw new NothingToResumeError(
      `Cannot resume: ${dir} holds no checkpoint store (no ${dir}/rounds, no ${dir}/keeper-<i>)`,
    );
  }
  stores.sort();
  let best: ResumedRun | undefined;
  const reasons: string[] = [];
  for (const store of stores) {
    try {
      const r = await resumeRun(store, options);
      if (!best || r.round > best.round) best = r;
    } catch (err) {
      if (!(err instanceof NothingToResumeError)) throw err;
      reasons.push(err.message);
    }
  }
  if (!best) throw new NothingToResumeError(reasons.join("; "));
  return best;
}

if (import.meta.main) {
  const dir = Deno.args[0];
  if (!dir || Deno.args.length !== 1) {
    console.error("Usage: deno run -A checkpoint/resume.ts RUN_DIR");
    Deno.exit(2);
  }
  try {
    const r = await resumeRunDir(dir);
    console.log(JSON.stringify({
      run: r.run,
      round: r.round,
      dir: r.dir,
      params: r.params.length,
      params_hash: r.paramsHash,
      params_sha256: r.paramsSha256,
      cursors: r.cursors,
      view_epoch: (r.view as { epoch?: number } | undefined)?.epoch ?? null,
      skipped: r.skipped,
    }));
  } catch (err) {
    console.error(err instanceof Error ? `${err.name}: ${err.message}` : err);
    Deno.exit(1);
  }
}
