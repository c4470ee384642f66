/**
 * The durable store of committed rounds under a run directory:
 *
 * ```
 * runs/<name>/
 *   rounds/<round>/model.safetensors   θ in the Hugging Face GPT-2 layout (gpt2_safetensors.ts)
 *   rounds/<round>/state.safetensors   outer momentum (and residual) + __metadata__: round,
 *                                       view, data cursors, settings, config
 *   rounds/<round>/manifest.json       sha256 and size of each file, round, params hash, created
 *   latest -> rounds/<round>            symlink to the newest committed round
 * ```
 *
 * A round is committed by one rename: its files are written into a temporary
 * folder `rounds/.tmp-*` (each file fsynced, the manifest last), the folder is
 * fsynced, renamed to `rounds/<round>`, and `rounds/` is fsynced. Only then is
 * `latest` moved (a new symlink renamed over the old one) and old rounds
 * pruned (renamed to `rounds/.trash-*` first, so a kill during deletion never
 * leaves a half-deleted round under a round's name). A kill at any point
 * leaves either no `rounds/<round>` or a complete one; stale temporary folders
 * are removed when a store opens.
 *
 * Loading never trusts a name alone: every file's size and sha256 are checked
 * against the manifest, and the decoded parameters against the manifest's
 * parameter hash. A round that fails is named with the reason and skipped; the
 * newest round that verifies is used.
 *
 * This file holds the store itself (commit, `latest`, retention, loading)
 * and re-exports the parts it is built from: a round's format and errors
 * (_round.ts), the file operations (_fs.ts), encoding (_prepare.ts) and
 * reading back (_read.ts).
 *
 * @module
 */
import type { GptConfig } from "../kernels/config.ts";
import { denoFs, errCode, type StoreFs, WRITE_HINT } from "./_fs.ts";
import { prepareRound } from "./_prepare.ts";
import { decodeRound, parseManifest, verifyFiles } from "./_read.ts";
import {
  CheckpointWriteError,
  CorruptCheckpointError,
  type Manifest,
  MANIFEST_FILE,
  type PreparedRound,
  ROUND_FILES,
  type RoundState,
} from "./_round.ts";

export {
  CheckpointWriteError,
  CorruptCheckpointError,
  type FileEntry,
  type Manifest,
  MANIFEST_FILE,
  MANIFEST_FORMAT,
  type PreparedRound,
  ROUND_FILES,
  type RoundState,
  STATE_FORMAT,
} from "./_round.ts";
export { denoFs, type StoreFs } from "./_fs.ts";
export { firstNonFinite, sha256Hex } from "./_bytes.ts";
export { prepareRound } from "./_prepare.ts";
export { decodeRound, parseManifest, verifyFiles } from "./_read.ts";

/**
 * Default retention: the last 3 committed rounds are kept, and every round
 * that is a multiple of 10, so that a long run keeps sparse history without
 * filling the disk.
 */
export const DEFAULT_RETENTION: Readonly<Retention> = Object.freeze({ keepLast: 3, keepEvery: 10 });

/** Which rounds survive pruning. */
export interface Retention {
  /** Keep the newest K committed rounds (at least 1). */
  keepLast: number;
  /** Also keep every round that is a multiple of M (0: none). */
  keepEvery: number;
}

/** A round read back and verified. */
export interface LoadedRound {
  /** The decoded state. */
  state: RoundState;
  /** Its manifest. */
  manifest: Manifest;
  /** The round's folder. */
  dir: string;
}

/** A round skipped while loading, and why. */
export interface SkippedRound {
  round: number;
  reason: string;
}

/** The result of {@linkcode CheckpointStore.loadLatest}. */
export interface LatestRound extends LoadedRound {
  /** Newer rounds that failed verification, newest first. */
  skipped: SkippedRound[];
}

/** Options of {@linkcode CheckpointStore}. */
export interface StoreOptions {
  /** Which rounds pruning keeps (default {@linkcode DEFAULT_RETENTION}). */
  retention?: Partial<Retention>;
  /** File operations (default {@linkcode denoFs}). */
  fs?: StoreFs;
}

/**
 * The checkpoint store of one run directory. One writer per directory: each
 * keeper owns its own.
 *
 * @example Commit a round and load it back
 * ```ts
 * import { CheckpointStore } from "./store.ts";
 * import { buildLayout } from "../kernels/layout.ts";
 * import assert from "node:assert/strict";
 * const dir = await Deno.makeTempDir();
 * const config = { nLayer: 1, nHead: 1, nEmbd: 8, blockSize: 4, vocabSize: 16 };
 * const n = buildLayout(config).totalLength;
 * const store = new CheckpointStore(dir);
 * const params = new Float32Array(n).map((_, i) => i / n);
 * await store.commit({ run: "r", round: 5, config, params, momentum: new Float32Array(n) });
 * const latest = await store.loadLatest();
 * assert.equal(latest?.state.round, 5);
 * assert.deepEqual(latest?.state.params, params);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export class CheckpointStore {
  /** The run directory. */
  readonly dir: string;
  /** The retention policy in force. */
  readonly retention: Retention;
  #fs: StoreFs;
  #cleaned = false;

  /** Opens (lazily creates) the store under `dir` (runs/<name>). */
  constructor(dir: string, options: StoreOptions = {}) {
    this.dir = dir.replace(/\/+$/, "") || "/";
    const r = { ...DEFAULT_RETENTION, ...options.retention };
    if (!Number.isInteger(r.keepLast) || r.keepLast < 1) {
      throw new RangeError(
        `Invalid retention: keepLast must be an integer >= 1, got ${r.keepLast}`,
      );
    }
    if (!Number.isInteger(r.keepEvery) || r.keepEvery < 0) {
      throw new RangeError(
        `Invalid retention: keepEvery must be an integer >= 0, got ${r.keepEvery}`,
      );
    }
    this.retention = r;
    this.#fs = options.fs ?? denoFs;
  }

  /** The folder of committed rounds. */
  get roundsDir(): string {
    return `${this.dir}/rounds`;
  }

  /** The folder of one round. */
  roundDir(round: number): string {
    return `${this.roundsDir}/${round}`;
  }

  /** Committed rounds (folders named by a round number), ascending. */
  async rounds(): Promise<number[]> {
    const names = await this.#fs.readDir(this.roundsDir);
    return names.filter((n) => /^(0|[1-9]\d*)$/.test(n)).map(Number).sort((a, b) => a - b);
  }

  /** Removes temporary and trash folders left by a killed writer. */
  async cleanup(): Promise<string[]> {
    const names = await this.#fs.readDir(this.roundsDir);
    const stale = names.filter((n) => n.startsWith(".tmp-") || n.startsWith(".trash-"));
    for (const n of stale) await this.#fs.remove(`${this.roundsDir}/${n}`);
    for (const n of await this.#fs.readDir(this.dir)) {
      if (n.startsWith(".latest-")) await this.#fs.remove(`${this.dir}/${n}`);
    }
    this.#cleaned = true;
    return stale;
  }

  /**
   * Commits a round durably (see the module doc for the steps), moves
   * `latest` and prunes. Committing a round that is already on disk and
   * verifies does nothing and returns its manifest.
   *
   * @throws {CheckpointWriteError} when a file system step fails; the round is then not committed
   */
  async commit(state: RoundState | PreparedRound): Promise<Manifest> {
    const prepared = "files" in state && state.files instanceof Map
      ? state as PreparedRound
      : await prepareRound(state as RoundState);
    const round = prepared.round;
    const fs = this.#fs;
    const step = async <T>(what: string, path: string, fn: () => Promise<T>): Promise<T> => {
      try {
        return await fn();
      } catch (err) {
        const code = errCode(err);
        const hint = WRITE_HINT[code] ? `${WRITE_HINT[code]} (${code})` : code;
        throw new CheckpointWriteError(
          round,
          code,
          `Cannot write checkpoint round ${round}: ${what} ${path}: ${hint}: ${
            err instanceof Error ? err.message : err
          }`,
          { cause: err },
        );
      }
    };
    await step("create", this.roundsDir, () => fs.mkdir(this.roundsDir));
    if (!this.#cleaned) await step("clean", this.roundsDir, () => this.cleanup());
    const final = this.roundDir(round);
    if ((await this.rounds()).includes(round)) {
      try {
        const existing = await this.verify(round);
        if (existing.params_sha256 !== prepared.manifest.params_sha256) {
          throw new CheckpointWriteError(
            round,
            "EEXIST",
            `Cannot write checkpoint round ${round}: ${final} already holds a different θ ` +
              `(${existing.params_hash}, new ${prepared.manifest.params_hash})`,
          );
        }
        return existing;
      } catch (err) {
        if (!(err instanceof CorruptCheckpointError)) throw err;
        // A corrupt round under this name is replaced by the good one.
        const trash = `${this.roundsDir}/.trash-${round}-${crypto.randomUUID()}`;
        await step("move aside", final, () => fs.rename(final, trash));
        await step("remove", trash, () => fs.remove(trash));
      }
    }
    const tmp = `${this.roundsDir}/.tmp-${round}-${crypto.randomUUID()}`;
    try {
      await step("create", tmp, () => fs.mkdir(tmp));
      // The manifest goes last: a folder with a manifest has all its files.
      for (const name of [...ROUND_FILES, MANIFEST_FILE]) {
        const path = `${tmp}/${name}`;
        await step("write", path, () => fs.writeFile(path, prepared.files.get(name)!));
      }
      await step("sync", tmp, () => fs.syncDir(tmp));
      await step("rename", `${tmp} to ${final}`, () => fs.rename(tmp, final));
    } catch (err) {
      await fs.remove(tmp).catch(() => {});
      throw err;
    }
    await step("sync", this.roundsDir, () => fs.syncDir(this.roundsDir));
    await this.#pointLatest(round, step);
    await step("prune", this.roundsDir, () => this.prune());
    return prepared.manifest;
  }

  async #pointLatest(
    round: number,
    step: <T>(what: string, path: string, fn: () => Promise<T>) => Promise<T>,
  ): Promise<void> {
    const newest = (await this.rounds()).at(-1);
    if (newest !== undefined && newest > round) return;
    const link = `${this.dir}/latest`;
    const tmp = `${this.dir}/.latest-${crypto.randomUUID()}`;
    await step("link", tmp, () => this.#fs.symlink(`rounds/${round}`, tmp));
    await step("rename", `${tmp} to ${link}`, () => this.#fs.rename(tmp, link));
    await step("sync", this.dir, () => this.#fs.syncDir(this.dir));
  }

  /** Rounds that retention keeps among `rounds` (ascending). */
  kept(rounds: number[]): number[] {
    const { keepLast, keepEvery } = this.retention;
    const last = new Set(rounds.slice(-keepLast));
    return rounds.filter((r) => last.has(r) || (keepEvery > 0 && r % keepEvery === 0));
  }

  /** Removes the rounds retention does not keep; returns them. */
  async prune(): Promise<number[]> {
    const all = await this.rounds();
    const keep = new Set(this.kept(all));
    const removed: number[] = [];
    for (const r of all) {
      if (keep.has(r)) continue;
      const trash = `${this.roundsDir}/.trash-${r}-${crypto.randomUUID()}`;
      await this.#fs.rename(this.roundDir(r), trash);
      await this.#fs.remove(trash);
      removed.push(r);
    }
    if (removed.length > 0) await this.#fs.syncDir(this.roundsDir);
    return removed;
  }

  /** Reads a round's manifest (unverified files). */
  async readManifest(round: number): Promise<Manifest> {
    const path = `${this.roundDir(round)}/${MANIFEST_FILE}`;
    let bytes: Uint8Array;
    try {
      bytes = await this.#fs.readFile(path);
    } catch (err) {
      throw new CorruptCheckpointError(
        round,
        MANIFEST_FILE,
        `Checkpoint round ${round} is corrupt: ${path} cannot be read: ${
          err instanceof Error ? err.message : err
        }`,
      );
    }
    return parseManifest(bytes, round, path);
  }

  /** Reads a round's files (manifest included) and checks them against the manifest. */
  async readVerified(round: number): Promise<PreparedRound> {
    const manifest = await this.readManifest(round);
    const files = new Map<string, Uint8Array>();
    const dir = this.roundDir(round);
    for (const name of ROUND_FILES) {
      try {
        files.set(name, await this.#fs.readFile(`${dir}/${name}`));
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) {
          throw new CorruptCheckpointError(
            round,
            name,
            `Checkpoint round ${round} is corrupt: ${dir}/${name} cannot be read: ${
              err instanceof Error ? err.message : err
            }`,
          );
        }
      }
    }
    await verifyFiles(manifest, files, dir);
    files.set(MANIFEST_FILE, await this.#fs.readFile(`${dir}/${MANIFEST_FILE}`));
    return { round, manifest, files };
  }

  /**
   * Checks a round's files against its manifest.
   *
   * @throws {CorruptCheckpointError} naming what is wrong
   */
  async verify(round: number): Promise<Manifest> {
    return (await this.readVerified(round)).manifest;
  }

  /**
   * Loads and verifies one round.
   *
   * @throws {CorruptCheckpointError} naming what is wrong
   */
  async load(round: number, options: { expect?: GptConfig } = {}): Promise<LoadedRound> {
    const { manifest, files } = await this.readVerified(round);
    const dir = this.roundDir(round);
    const state = await decodeRound(manifest, files, { source: dir, expect: options.expect });
    return { state, manifest, dir };
  }

  /**
   * Loads the newest round that verifies, skipping (and naming) corrupt,
   * torn or incomplete ones. Undefined when no round verifies.
   */
  async loadLatest(
    options: { expect?: GptConfig; onSkip?: (skipped: SkippedRound) => void } = {},
  ): Promise<LatestRound | undefined> {
    const skipped: SkippedRound[] = [];
    for (const round of (await this.rounds()).reverse()) {
      try {
        return { ...await this.load(round, options), skipped };
      } catch (err) {
        if (!(err instanceof CorruptCheckpointError)) throw err;
        const s = { round, reason: err.message };
        skipped.push(s);
        options.onSkip?.(s);
      }
    }
    return undefined;
  }
}
