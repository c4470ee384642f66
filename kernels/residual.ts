/**
 * Residual connection: out = a + b forward, dst += src to route a gradient
 * into two branches on the way back.
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { elementwise } from "./_wgsl.ts";

/**
 * out[i] = a[i] + b[i] for i < n.
 *
 * @example
 * ```ts ignore
 * gpu.run([residualForward(gpu, { a, b, out }, { n: B * T * C })]);
 * ```
 */
export function residualForward(
  gpu: Gpu,
  bufs: { a: TensorRef; b: TensorRef; out: TensorRef },
  shape: { n: number },
): Dispatch {
  return elementwise(
    gpu,
    "residualForward",
    [["a", bufs.a], ["b", bufs.b], ["o", bufs.out]],
    shape.n,
    "o[i] = a[i] + b[i];",
  );
}

/**
 * dst[i] += src[i] for i < n.
 *
 * @example
 * ```ts ignore
 * gpu.run([accumulate(gpu, { dst: dresidual, src: dblock }, { n: B * T * C })]);
 * ```
 */
export function accumulate(
  gpu: Gpu,
  bufs: { dst: TensorRef; src: TensorRef },
  shape: { n: number },
): Dispatch {
  return elementwise(
    gpu,
    "accumulate",
    [["dst", bufs.dst], ["src", bufs.src]],
    shape.n,
    "dst[i] = dst[i] + src[i];",
  );
}
