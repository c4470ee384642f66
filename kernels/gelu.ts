/**
 * GELU, tanh approximation (GPT-2's): gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi)
 * (x + 0.044715 x^3))).
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { elementwise, f32Lit } from "./_wgsl.ts";
import { GELU_SCALE } from "./reference.ts";

/**
 * The GELU functions for element type `t`, their names ending in `suffix`.
 * tanh saturates to +-1 in f32 beyond |10|; clamping keeps exp-based tanh
 * implementations away from inf/inf.
 */
function geluFunctions(t: string, suffix: string): string {
  return `
fn tanh_arg${suffix}(x: ${t}) -> ${t} {
  return clamp(${f32Lit(GELU_SCALE)} * (x + 0.044715 * x * x * x), ${t}(-10.0), ${t}(10.0));
}
fn gelu${suffix}(x: ${t}) -> ${t} {
  return 0.5 * x * (1.0 + tanh(tanh_arg${suffix}(x)));
}
fn gelu_grad${suffix}(x: ${t}) -> ${t} {
  let th = tanh(tanh_arg${suffix}(x));
  let sech2 = 1.0 - th * th;
  return 0.5 * (1.0 + th) +
    x * 0.5 * sech2 * ${f32Lit(GELU_SCALE)} * (1.0 + 3.0 * 0.044715 * x * x);
}`;
}

/**
 * WGSL functions `gelu(x)` and `gelu_grad(x)` (d gelu / dx), and their vec4
 * forms `gelu4` and `gelu_grad4`, shared by the element-wise kernels here and
 * the matmul epilogues that fuse them.
 */
export const GELU_WGSL = geluFunctions("f32", "") + geluFunctions("vec4<f32>", "4");

/**
 * out = gelu(inp), element-wise over n.
 *
 * @example
 * ```ts ignore
 * gpu.run([geluForward(gpu, { inp: fch, out: fchGelu }, { n: B * T * 4 * C })]);
 * ```
 */
export function geluForward(
  gpu: Gpu,
  bufs: { inp: TensorRef; out: TensorRef },
  shape: { n: number },
): Dispatch {
  return elementwise(
    gpu,
    "geluForward",
    [["inp", bufs.inp], ["o", bufs.out]],
    shape.n,
    `o[i] = gelu(inp[i]);`,
    GELU_WGSL,
  );
}

/**
 * dinp += gelu'(inp) * dout, element-wise over n.
 *
 * @example
 * ```ts ignore
 * gpu.run([geluBackward(gpu, { dinp: dfch, inp: fch, dout: dfchGelu }, { n })]);
 * ```
 */
export function geluBackward(
  gpu: Gpu,
  bufs: { dinp: TensorRef; inp: TensorRef; dout: TensorRef },
  shape: { n: number },
): Dispatch {
  return elementwise(
    gpu,
    "geluBackward",
    [["dinp", bufs.dinp], ["inp", bufs.inp], ["dout", bufs.dout]],
    shape.n,
    `dinp[i] = dinp[i] + gelu_grad(inp[i]) * dout[i];`,
    GELU_WGSL,
  );
}
