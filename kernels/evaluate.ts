/**
 * Evaluation loss: the mean next-byte cross-entropy in nats/byte of a model
 * over a byte stream cut into windows of blockSize+1 bytes at offsets 0, T,
 * 2T, ... (T = blockSize; the first T bytes are the input, each position's
 * target is the next byte). A trailing window shorter than T+1 is dropped.
 * Shared by `deno task eval`, the periodic validation of `deno task train`
 * and the distributed run.
 *
 * @module
 */
import type { GptModel } from "./model.ts";

/** How the windows are picked when there are more than `maxWindows`. */
export type WindowSelection = "first" | "spread";

/** Options for {@linkcode evaluate}. */
export interface EvaluateOptions {
  /** Use at most this many windows (default all). */
  maxWindows?: number;
  /**
   * "first" (default): windows 0..maxWindows-1. "spread": maxWindows windows
   * evenly spaced over all windows (index floor(i * total / maxWindows)), a
   * cheaper estimate that still covers the whole stream.
   */
  selection?: WindowSelection;
  /**
   * Evaluate only part `index` of `count` of the selected windows (those
   * whose place in the selection is index mod count): trainers that hold the
   * same parameters share one evaluation, and the token-weighted mean of the
   * parts' losses is the whole selection's.
   */
  part?: EvalPart;
}

/** One of `count` parts of an evaluation's windows. */
export interface EvalPart {
  index: number;
  count: number;
}

/**
 * Checks a part; the RangeError names what is wrong.
 *
 * @example
 * ```ts
 * import { checkPart } from "./evaluate.ts";
 * checkPart({ index: 1, count: 2 });
 * ```
 */
export function checkPart(part: EvalPart): EvalPart {
  const { index, count } = part;
  if (!Number.isSafeInteger(count) || count < 1) {
    throw new RangeError(`Invalid evaluation part: count ${count} (expected an integer >= 1)`);
  }
  if (!Number.isSafeInteger(index) || index < 0 || index >= count) {
    throw new RangeError(
      `Invalid evaluation part: index ${index} (expected an integer from 0 to ${count - 1})`,
    );
  }
  return part;
}

/** The result of {@linkcode evaluate}. */
export interface EvalResult {
  /** Mean cross-entropy, nats/byte (NaN for a part that got no window). */
  loss: number;
  /** Windows evaluated. */
  windows: number;
  /** Positions (bytes predicted) evaluated: windows * T. */
  tokens: number;
}

/**
 * The number of full windows of T+1 bytes at stride T in `length` bytes.
 *
 * @example
 * ```ts
 * import { windowCount } from "./evaluate.ts";
 * console.log(windowCount(129, 64)); // 2
 * ```
 */
export function windowCount(length: number, blockSize: number): number {
  return length < blockSize + 1 ? 0 : Math.floor((length - 1) / blockSize);
}

/** The window indices {@linkcode evaluate} uses (of its part, when it has one). */
export function selectWindows(total: number, options: EvaluateOptions = {}): number[] {
  const max = options.maxWindows ?? total;
  if (!Number.isInteger(max) || max < 1) {
    throw new RangeError(`Invalid max windows: ${max} (expected a positive integer)`);
  }
  const n = Math.min(total, max);
  const all = (options.selection ?? "first") === "first" || n === total
    ? Array.from({ length: n }, (_, i) => i)
    : Array.from({ length: n }, (_, i) => Math.floor((i * total) / n));
  if (!options.part) return all;
  const { index, count } = checkPart(options.part);
  return all.filter((_, i) => i % count === index);
}

/**
 * Evaluates `model` on `bytes`, batch by batch (forward only), summing the
 * per-position losses in float64 in window order, so the same inputs give the
 * same number every run.
 *
 * @example
 * ```ts ignore
 * const { loss, windows } = await evaluate(model, corpus.val, { maxWindows: 512 });
 * ```
 *
 * @throws {RangeError} when `bytes` holds no full window
 */
export async function evaluate(
  model: GptModel,
  bytes: Uint8Array,
  options: EvaluateOptions = {},
): Promise<EvalResult> {
  const T = model.config.blockSize;
  const total = windowCount(bytes.length, T);
  if (total === 0) {
    throw new RangeError(
      `Cannot evaluate: ${bytes.length} bytes hold no window of block size + 1 = ${T + 1} bytes`,
    );
  }
  const picked = selectWindows(total, options);
  if (picked.length === 0) return { loss: NaN, windows: 0, tokens: 0 };
  const B = model.batch;
  const inputs = new Uint32Array(B * T);
  const targets = new Uint32Array(B * T);
  let sum = 0;
  for (let start = 0; start < picked.length; start += B) {
    const rows = Math.min(B, picked.length - start);
    for (let r = 0; r < rows; r++) {
      const o = picked[start + r] * T;
      for (let t = 0; t < T; t++) {
        inputs[r * T + t] = bytes[o + t];
        targets[r * T + t] = bytes[o + t + 1];
      }
    }
    const losses = await model.evalLosses(
      inputs.subarray(0, rows * T),
      targets.subarray(0, rows * T),
    );
    for (let i = 0; i < losses.length; i++) sum += losses[i];
  }
  const tokens = picked.length * T;
  return { loss: sum / tokens, windows: picked.length, tokens };
}
