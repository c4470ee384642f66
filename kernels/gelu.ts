/**
 * GELU, tanh approximation (GPT-2's): gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi)
 * (x + 0.044715 x^3))).
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { bindings, checkRef, checkShape, f32Lit, grid, slice, WG } from "./_wgsl.ts";
import { GELU_SCALE } from "./reference.ts";

// tanh saturates to +-1 in f32 beyond |10|; clamping keeps exp-based tanh
// implementations away from inf/inf.
const PRELUDE = `
fn tanh_arg(x: f32) -> f32 {
  return clamp(${f32Lit(GELU_SCALE)} * (x + 0.044715 * x * x * x), -10.0, 10.0);
}`;

function build(
  gpu: Gpu,
  kernel: string,
  refs: [string, TensorRef | undefined][],
  n: number,
  body: string,
): Dispatch {
  checkShape(kernel, { n }, ["n"], ["n"]);
  const g = grid(n);
  const code = `${bindings(refs.map(([name]) => name))}
${PRELUDE}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * ${g.stride}u;
  if (i >= ${n}u) { return; }
  ${body}
}`;
  const bound = refs.map(([name, ref]) => slice(checkRef(kernel, name, ref, n), n));
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), bound, n ? g.groups : [0]);
}

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
  return build(
    gpu,
    "geluForward",
    [["inp", bufs.inp], ["o", bufs.out]],
    shape.n,
    `let x = inp[i];
  o[i] = 0.5 * x * (1.0 + tanh(tanh_arg(x)));`,
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
  return build(
    gpu,
    "geluBackward",
    [["dinp", bufs.dinp], ["inp", bufs.inp], ["dout", bufs.dout]],
    shape.n,
    `let x = inp[i];
  let th = tanh(tanh_arg(x));
  let sech2 = 1.0 - th * th;
  let g = 0.5 * (1.0 + th) +
    x * 0.5 * sech2 * ${f32Lit(GELU_SCALE)} * (1.0 + 3.0 * 0.044715 * x * x);
  dinp[i] = dinp[i] + g * dout[i];`,
  );
}
