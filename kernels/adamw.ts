/**
 * The optimizer step: the global L2 norm of the gradients (a deterministic
 * two-stage reduction) and AdamW with gradient clipping computed on the GPU
 * from that norm.
 *
 * `hyper` may be a storage buffer (TensorRef of >= 6 f32) or a uniform buffer
 * (made with GPUBufferUsage.UNIFORM, >= 32 bytes from its offset): the kernel
 * is generated for whichever it is given.
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import {
  bindings,
  checkRef,
  checkShape,
  f32Lit,
  grid,
  RED,
  scratch,
  slice,
  treeSum,
  vec4Access,
  WG,
} from "./_wgsl.ts";

/** Elements each invocation of gradNorm's first stage sums, at least. */
const PER_INVOCATION = 16;
/** Most workgroups in gradNorm's first stage (= invocations of the second). */
const MAX_PARTIALS = RED;

/**
 * out[0] = sqrt(sum of grads[i]^2) over n floats. Two dispatches: up to 256
 * workgroups each reduce a fixed strided subset into a scratch partial, then
 * one workgroup sums the partials in a fixed order. Same input, same bits.
 *
 * @example
 * ```ts ignore
 * gpu.run(gradNorm(gpu, { grads, out: norm }, { n: grads.length }));
 * ```
 */
export function gradNorm(
  gpu: Gpu,
  bufs: { grads: TensorRef; out: TensorRef },
  shape: { n: number },
): Dispatch[] {
  const kernel = "gradNorm";
  checkShape(kernel, shape, ["n"]);
  const { n } = shape;
  const grads = slice(checkRef(kernel, "grads", bufs.grads, n), n);
  const out = slice(checkRef(kernel, "out", bufs.out, 1), 1);
  // Read as vec4s when n allows (a quarter of the loads, which bound CPU adapters).
  const a = vec4Access(n);
  const groups = Math.max(1, Math.min(MAX_PARTIALS, Math.ceil(n / (RED * PER_INVOCATION))));
  const span = groups * RED;
  const iters = Math.ceil(a.n / span);
  const partial = scratch(gpu, groups, "gradNorm partials");
  const stage1 = `${bindings([["grads", a.t], "partial"])}
${
    treeSum(`
  for (var k = 0u; k < ${iters}u; k++) {
    let i = k * ${span}u + w * ${RED}u + l;
    if (i < ${a.n}u) { let g = grads[i]; acc += ${a.w === 4 ? "dot(g, g)" : "g * g"}; }
  }`)
  }
@compute @workgroup_size(${RED})
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let total = reduce(l, wid.x);
  if (l == 0u) { partial[wid.x] = total; }
}`;
  const stage2 = `${bindings(["partial", "o"])}
${
    treeSum(`
  if (l < ${groups}u) { acc = partial[l]; }`)
  }
@compute @workgroup_size(${RED})
fn main(@builtin(local_invocation_index) l: u32) {
  let total = reduce(l, 0u);
  if (l == 0u) { o[0] = sqrt(total); }
}`;
  return [
    gpu.dispatch(
      `${kernel} partials`,
      gpu.pipeline(stage1, "main", `${kernel} partials`),
      [grads, partial],
      [groups],
    ),
    gpu.dispatch(`${kernel} total`, gpu.pipeline(stage2, "main", `${kernel} total`), [
      partial,
      out,
    ], [1]),
  ];
}

/**
 * AdamW on elements offset..offset+n of params, grads, m and v (offset in
 * elements, default 0, so a sub-range need not be 256-byte aligned).
 * hyper = [lr, beta1, beta2, eps, step_t, maxGradNorm] (f32, rewritten by the
 * caller each step). Gradients are scaled by min(1, maxGradNorm / (norm[0] +
 * 1e-6)); maxGradNorm <= 0 turns clipping off. Then llm.c's update:
 * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; mhat = m / (1 - b1^t);
 * vhat = v / (1 - b2^t); p -= lr (mhat / (sqrt(vhat) + eps) + weightDecay p).
 * With `decayEnd`, weight decay applies only to elements before that index
 * (a model's 2-D weights laid out first), so one dispatch updates the decayed
 * and the undecayed parameters: on CPU adapters each dispatch costs ~0.1 ms
 * of fixed overhead.
 *
 * @example
 * ```ts ignore
 * const hyper = gpu.storage(new Float32Array([3e-4, 0.9, 0.95, 1e-8, 1, 1.0]));
 * gpu.run([adamw(gpu, { params, grads, m, v, norm, hyper: { buffer: hyper, length: 6 } },
 *   { n: params.length, weightDecay: 0.1 })]);
 * ```
 */
export function adamw(
  gpu: Gpu,
  bufs: {
    params: TensorRef;
    grads: TensorRef;
    m: TensorRef;
    v: TensorRef;
    norm: TensorRef;
    hyper: TensorRef;
  },
  shape: { n: number; offset?: number; weightDecay: number; decayEnd?: number },
): Dispatch {
  const kernel = "adamw";
  const offset = shape.offset ?? 0;
  const decayEnd = shape.decayEnd ?? offset + shape.n;
  if (!Number.isSafeInteger(decayEnd) || decayEnd < 0) {
    throw new RangeError(
      `Cannot build ${kernel}: decayEnd must be a non-negative integer, got ${decayEnd}`,
    );
  }
  checkShape(kernel, { ...shape, offset }, ["n", "offset"], ["n", "offset"]);
  if (!Number.isFinite(shape.weightDecay)) {
    throw new RangeError(
      `Cannot build ${kernel}: weightDecay must be finite, got ${shape.weightDecay}`,
    );
  }
  const { n } = shape;
  const end = offset + n;
  const refs = [
    slice(checkRef(kernel, "params", bufs.params, end), end),
    slice(checkRef(kernel, "grads", bufs.grads, end), end),
    slice(checkRef(kernel, "m", bufs.m, end), end),
    slice(checkRef(kernel, "v", bufs.v, end), end),
    slice(checkRef(kernel, "norm", bufs.norm, 1), 1),
  ];
  const hyper = bufs.hyper;
  const isUniform = Boolean(hyper?.buffer && (hyper.buffer.usage & GPUBufferUsage.UNIFORM));
  let hyperDecl: string;
  if (isUniform) {
    const off = hyper.offset ?? 0;
    if (off % 256 !== 0 || hyper.buffer.size < off + 32) {
      throw new RangeError(
        `Cannot build ${kernel}: uniform hyper needs 32 bytes at a 256-aligned offset, ` +
          `got offset ${off} in ${hyper.buffer.size} bytes`,
      );
    }
    refs.push({ buffer: hyper.buffer, offset: off, length: 8 });
    hyperDecl = `@group(0) @binding(5) var<uniform> hyper: array<vec4<f32>, 2>;
fn hp(i: u32) -> f32 { return hyper[i / 4u][i % 4u]; }`;
  } else {
    refs.push(slice(checkRef(kernel, "hyper", hyper, 6), 6));
    hyperDecl = `@group(0) @binding(5) var<storage, read_write> hyper: array<f32>;
fn hp(i: u32) -> f32 { return hyper[i]; }`;
  }
  // Four elements per invocation as vec4s when the range is 4-aligned: on CPU adapters a
  // load costs about the same at any width.
  // (A range that starts unaligned is read as scalars: vec4Access(1).)
  const { w, t } = vec4Access(offset % 4 === 0 ? n : 1);
  const g = grid(n / w, WG);
  const code = `${bindings([["params", t], ["grads", t], ["m", t], ["v", t], "norm"])}
${hyperDecl}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let j = gid.x + gid.y * ${g.stride}u;
  if (j >= ${n / w}u) { return; }
  let i = j + ${offset / w}u;
  let lr = hp(0u);
  let b1 = hp(1u);
  let b2 = hp(2u);
  let eps = hp(3u);
  let t = hp(4u);
  let maxNorm = hp(5u);
  var clip = 1.0;
  if (maxNorm > 0.0) { clip = min(1.0, maxNorm / (norm[0] + 1e-6)); }
  let gr = grads[i] * clip;
  let mi = b1 * m[i] + (1.0 - b1) * gr;
  let vi = b2 * v[i] + (1.0 - b2) * gr * gr;
  m[i] = mi;
  v[i] = vi;
  // Component-wise, so each element gets the same bits with w = 1 or 4.
  let mh = mi / (1.0 - pow(b1, t));
  let vh = vi / (1.0 - pow(b2, t));
  let wd = ${
    w === 4
      ? `select(vec4<f32>(0.0), vec4<f32>(${
        f32Lit(shape.weightDecay)
      }), vec4<u32>(i * 4u) + vec4<u32>(0u, 1u, 2u, 3u) < vec4<u32>(${decayEnd}u))`
      : `select(0.0, ${f32Lit(shape.weightDecay)}, i < ${decayEnd}u)`
  };
  let p = params[i];
  params[i] = p - lr * (mh / (sqrt(vh) + eps) + wd * p);
}`;
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), refs, n ? g.groups : [0]);
}
