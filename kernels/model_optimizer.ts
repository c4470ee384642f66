/**
 * The optimizer part of a training step: the global gradient norm, then AdamW
 * over all parameters with weight decay on the decayed region, which the
 * layout puts first (kernels/layout.ts); one dispatch each per chunk of at
 * most one binding (one chunk unless the vectors exceed
 * maxStorageBufferBindingSize).
 *
 * @module
 */
import type { Dispatch, Gpu } from "./device.ts";
import type { ParamLayout } from "./layout.ts";
import { type AdamwBuffers, adamwChunks, gradNorm } from "./adamw.ts";

/**
 * The gradient-norm and AdamW dispatches over the flat vectors of `layout`:
 * the norm is written to `bufs.norm`, which AdamW reads to clip.
 */
export function buildOptimizer(
  gpu: Gpu,
  bufs: AdamwBuffers,
  shape: { layout: ParamLayout; weightDecay: number; chunk: number },
): Dispatch[] {
  const n = shape.layout.totalLength;
  const { chunk } = shape;
  const opt: Dispatch[] = [];
  opt.push(...gradNorm(gpu, { grads: bufs.grads, out: bufs.norm }, { n, chunk }));
  const { decayRegion } = shape.layout;
  if (decayRegion.offset !== 0) {
    throw new Error(
      `Cannot build the optimizer: the decayed region starts at ${decayRegion.offset}, not 0`,
    );
  }
  opt.push(...adamwChunks(gpu, bufs, {
    n,
    weightDecay: shape.weightDecay,
    decayEnd: decayRegion.length,
    chunk,
  }));
  return opt;
}
