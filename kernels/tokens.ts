/**
 * Token batches on their way to the GPU: the shape and vocabulary checks, and
 * the copy into the reused u32 words the model uploads.
 *
 * @module
 */

/** Token input: [B, T] row-major bytes or u32 token ids. */
export type Tokens = Uint8Array | Uint32Array;

/** The shape a batch must have: rows of `T` tokens, 1..`most` rows, ids below `V`. */
export interface TokenShape {
  /** Tokens per row (the block size). */
  T: number;
  /** The vocabulary size. */
  V: number;
  /** The most rows a batch may have. */
  most: number;
  /** What the batch is for, in errors ("step", "eval"). */
  what: string;
}

/**
 * Checks [rows, T] `inputs` (and `targets` of the same length) against
 * `shape` and copies them into the first `most × T` of `words`, the rest 0.
 * Returns the number of rows; a bad batch is a RangeError naming it.
 *
 * @example
 * ```ts
 * import { stageTokens } from "./tokens.ts";
 * const words = { inputs: new Uint32Array(8), targets: new Uint32Array(8) };
 * const rows = stageTokens(new Uint8Array([1, 2, 3, 4]), undefined, words, {
 *   T: 4, V: 256, most: 2, what: "eval",
 * });
 * console.log(rows, words.inputs); // 1 Uint32Array [1, 2, 3, 4, 0, 0, 0, 0]
 * ```
 */
export function stageTokens(
  inputs: Tokens,
  targets: Tokens | undefined,
  words: { inputs: Uint32Array; targets: Uint32Array },
  shape: TokenShape,
): number {
  const { T, most, what } = shape;
  const rows = inputs.length / T;
  if (!Number.isInteger(rows) || rows < 1 || rows > most) {
    throw new RangeError(
      `Invalid ${what} inputs: ${inputs.length} tokens is not 1..${most} rows of T=${T}`,
    );
  }
  if (targets && targets.length !== inputs.length) {
    throw new RangeError(
      `Invalid ${what} targets: ${targets.length} tokens, inputs have ${inputs.length}`,
    );
  }
  copyTokens(inputs, words.inputs.subarray(0, most * T), "inputs", shape);
  copyTokens(targets ?? new Uint8Array(0), words.targets.subarray(0, most * T), "targets", shape);
  return rows;
}

function copyTokens(src: Tokens, dst: Uint32Array, kind: string, shape: TokenShape): void {
  dst.fill(0);
  for (let i = 0; i < src.length; i++) {
    const x = src[i];
    if (x >= shape.V) {
      throw new RangeError(
        `Invalid ${shape.what} ${kind}: token ${x} at ${i} >= vocabulary ${shape.V}`,
      );
    }
    dst[i] = x;
  }
}
