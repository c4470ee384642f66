/**
 * Byte-level helpers shared by encoding and decoding a round: the sha256
 * every file and θ are checked by, the scan for non-finite floats, and the
 * padding elements of the flat layout (kept in state.safetensors, since the
 * model file holds only the named tensors).
 *
 * @module
 */
import { createHash } from "node:crypto";
import { inPieces, PACE_BYTES } from "./_background.ts";
import type { ParamLayout } from "../kernels/layout.ts";

/**
 * Lower-case hex sha256 of bytes, on the calling thread: node:crypto's
 * sha256 runs ~1.5 GB/s here against ~0.23 GB/s for `crypto.subtle.digest`,
 * and running on the caller keeps a keeper's hashing on its low-priority
 * writer thread.
 */
export function sha256Hex(bytes: Uint8Array, pace?: () => void): Promise<string> {
  const hash = createHash("sha256");
  inPieces(bytes.length, PACE_BYTES, pace, (a, b) => hash.update(bytes.subarray(a, b)));
  return Promise.resolve(hash.digest("hex"));
}

/** The bytes of a float array (a view, no copy). */
export function floatBytes(x: Float32Array): Uint8Array {
  return new Uint8Array(x.buffer, x.byteOffset, x.byteLength);
}

/** The padding elements of a flat layout (between views), in order. */
function paddingRanges(layout: ParamLayout): [number, number][] {
  const views = [...layout.views].sort((a, b) => a.offset - b.offset);
  const out: [number, number][] = [];
  let at = 0;
  for (const v of views) {
    if (v.offset > at) out.push([at, v.offset]);
    at = v.offset + v.length;
  }
  if (layout.totalLength > at) out.push([at, layout.totalLength]);
  return out;
}

/** The padding elements of `params`, or undefined when they are all +0 (the usual case). */
export function gatherPadding(layout: ParamLayout, params: Float32Array): Float32Array | undefined {
  const ranges = paddingRanges(layout);
  const n = ranges.reduce((s, [a, b]) => s + b - a, 0);
  const out = new Float32Array(n);
  let k = 0;
  let nonzero = false;
  const bits = new Uint32Array(params.buffer, params.byteOffset, params.length);
  for (const [a, b] of ranges) {
    for (let i = a; i < b; i++) {
      if (bits[i] !== 0) nonzero = true;
      out[k++] = params[i];
    }
  }
  return nonzero ? out : undefined;
}

/** Puts padding elements gathered by {@linkcode gatherPadding} back into `params`. */
export function scatterPadding(
  layout: ParamLayout,
  params: Float32Array,
  padding: Float32Array,
): void {
  let k = 0;
  for (const [a, b] of paddingRanges(layout)) {
    for (let i = a; i < b; i++) params[i] = padding[k++];
  }
}

/**
 * Index of the first non-finite element of `x`, -1 when all are finite. One
 * float64 sum is non-finite exactly when some element is (float32 values
 * cannot overflow it): a plain add loop, then a search only on failure.
 */
export function firstNonFinite(x: Float32Array, pace?: () => void): number {
  let sum = 0;
  inPieces(x.length, PACE_BYTES / 4, pace, (a, b) => {
    let s = 0;
    for (let i = a; i < b; i++) s += x[i];
    sum += s;
  });
  return Number.isFinite(sum) ? -1 : x.findIndex((v) => !Number.isFinite(v));
}
