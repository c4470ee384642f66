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

/**
 * Floats each workgroup of gradNorm's first stage reduces: a fixed segment of
 * the vector, so the order of the sum depends on n only, not on how the
 * vector is cut into bindings. Whole-vector kernels are dispatched in chunks
 * of a multiple of it ({@linkcode CHUNK_ALIGN}).
 */
export const NORM_SEGMENT = RED * 64;

/**
 * out[0] = sqrt(sum of grads[i]^2) over n floats. Two stages: one workgroup
 * per segment of {@linkcode NORM_SEGMENT} floats sums its segment (each
 * invocation a fixed strided subset, then a fixed tree) into a partial, then
 * one workgroup sums the partials in a fixed order. Same input, same bits.
 *
 * With `chunk` (floats, a multiple of NORM_SEGMENT), the first stage binds
 * `grads` in ranges of at most `chunk` floats, one dispatch each, for vectors
 * larger than one binding may be (maxStorageBufferBindingSize); the result
 * has the same bits with or without it.
 *
 * @example
 * ```ts ignore
 * gpu.run(gradNorm(gpu, { grads, out: norm }, { n: grads.length }));
 * ```
 */
export function gradNorm(
  gpu: Gpu,
  bufs: { grads: TensorRef; out: TensorRef },
  shape: { n: number; chunk?: number },
): Dispatch[] {
  const kernel = "gradNorm";
  checkShape(kernel, shape, ["n"]);
  const { n } = shape;
  const chunk = shape.chunk ?? Math.ceil(n / NORM_SEGMENT) * NORM_SEGMENT;
  if (!Number.isSafeInteger(chunk) || chunk < NORM_SEGMENT || chunk % NORM_SEGMENT !== 0) {
    throw new RangeError(
      `Cannot build ${kernel}: chunk must be a positive multiple of ${NORM_SEGMENT}, got ${chunk}`,
    );
  }
  const grads = checkRef(kernel, "grads", bufs.grads, n);
  const out = slice(checkRef(kernel, "out", bufs.out, 1), 1);
  // Read as vec4s when n allows (a quarter of the loads, which bound CPU adapters); chunks
  // start at multiples of NORM_SEGMENT, so every chunk takes the same access.
  const a = vec4Access(n);
  const segW = NORM_SEGMENT / a.w;
  const parts = Math.ceil(n / NORM_SEGMENT);
  const partial = scratch(gpu, parts, "gradNorm partials");
  const out1: Dispatch[] = [];
  for (let start = 0; start < n; start += chunk) {
    const len = Math.min(chunk, n - start);
    const groups = Math.ceil(len / NORM_SEGMENT);
    const base = start / NORM_SEGMENT;
    const stage1 = `${bindings([["grads", a.t], "partial"])}
${
      treeSum(`
  for (var k = 0u; k < ${segW / RED}u; k++) {
    let i = w * ${segW}u + k * ${RED}u + l;
    if (i < ${Math.ceil(len / a.w)}u) { let g = grads[i]; acc += ${
        a.w === 4 ? "dot(g, g)" : "g * g"
      }; }
  }`)
    }
@compute @workgroup_size(${RED})
fn main(@builtin(local_invocation_index) l: u32, @builtin(workgroup_id) wid: vec3<u32>) {
  let total = reduce(l, wid.x);
  if (l == 0u) { partial[${base}u + wid.x] = total; }
}`;
    const range = { buffer: grads.buffer, offset: (grads.offset ?? 0) + start * 4, length: len };
    out1.push(gpu.dispatch(
      `${kernel} partials`,
      gpu.pipeline(stage1, "main", `${kernel} partials`),
      [range, partial],
      [groups],
    ));
  }
  const stage2 = `${bindings(["partial", "o"])}
${
    treeSum(`
  for (var k = 0u; k < ${Math.ceil(parts / RED)}u; k++) {
    let i = k * ${RED}u + l;
    if (i < ${parts}u) { acc += partial[i]; }
  }`)
  }
@compute @workgroup_size(${RED})
fn main(@builtin(local_invocation_index) l: u32) {
  let total = reduce(l, 0u);
  if (l == 0u) { o[0] = sqrt(total); }
}`;
  return [
    ...out1,
    gpu.dispatch(`${kernel} total`, gpu.pipeline(stage2, "main", `${kernel} total`), [
      partial,
      out,
    ], [1]),
  ];
}

/**
 * The buffers of {@linkcode adamw} and {@linkcode adamwChunks}: parameters, gradients and the two
 * moments (updated in place), the gradient norm of the step (for clipping) and the hyper-parameters.
 */
export interface AdamwBuffers {
  /** Parameters, updated in place. */
  params: TensorRef;
  /** Gradients of the step. */
  grads: TensorRef;
  /** First moment. */
  m: TensorRef;
  /** Second moment. */
  v: TensorRef;
  /** One f32: the global gradient norm, from the gradient-norm kernel. */
  norm: TensorRef;
  /** The step's hyper-parameters: >= 6 f32, storage or uniform (see the module doc). */
  hyper: TensorRef;
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
  bufs: AdamwBuffers,
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

/**
 * {@linkcode adamw} over elements 0..n of whole vectors, as one dispatch per
 * range of at most `chunk` floats (default: all n in one), each binding only
 * its range: for vectors larger than one binding may be. Element-wise, so the
 * result has the same bits however the vector is cut. `decayEnd` counts from
 * element 0 of the vectors.
 *
 * @example
 * ```ts ignore
 * gpu.run(adamwChunks(gpu, { params, grads, m, v, norm, hyper }, {
 *   n, weightDecay: 0.1, decayEnd, chunk: 1 << 20,
 * }));
 * ```
 */
export function adamwChunks(
  gpu: Gpu,
  bufs: AdamwBuffers,
  shape: { n: number; weightDecay: number; decayEnd?: number; chunk?: number },
): Dispatch[] {
  const { n } = shape;
  const chunk = shape.chunk ?? n;
  if (!Number.isSafeInteger(chunk) || chunk < 1 || (chunk % 64 !== 0 && chunk < n)) {
    throw new RangeError(
      `Cannot build adamw: chunk must be a positive multiple of 64 floats, got ${chunk}`,
    );
  }
  const decayEnd = shape.decayEnd ?? n;
  const out: Dispatch[] = [];
  for (let start = 0; start < n; start += chunk) {
    const len = Math.min(chunk, n - start);
    const range = (name: string, r: TensorRef): TensorRef => ({
      buffer: checkRef("adamw", name, r, n).buffer,
      offset: (r.offset ?? 0) + start * 4,
      length: len,
    });
    out.push(adamw(gpu, {
      params: range("params", bufs.params),
      grads: range("grads", bufs.grads),
      m: range("m", bufs.m),
      v: range("v", bufs.v),
      norm: bufs.norm,
      hyper: bufs.hyper,
    }, {
      n: len,
      weightDecay: shape.weightDecay,
      decayEnd: Math.min(len, Math.max(0, decayEnd - start)),
    }));
  }
  return out;
}
