/**
 * Residual connection: out = a + b forward, dst += src to route a gradient
 * into two branches on the way back.
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { bindings, checkRef, checkShape, grid, slice, WG } from "./_wgsl.ts";

function elementwise(
  gpu: Gpu,
  kernel: string,
  refs: [string, TensorRef][],
  n: number,
  body: string,
): Dispatch {
  const g = grid(n);
  const code = `${bindings(refs.map(([name]) => name))}
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
  checkShape("residualForward", shape, ["n"], ["n"]);
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
  checkShape("accumulate", shape, ["n"], ["n"]);
  return elementwise(
    gpu,
    "accumulate",
    [["dst", bufs.dst], ["src", bufs.src]],
    shape.n,
    "dst[i] = dst[i] + src[i];",
  );
}
