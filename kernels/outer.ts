/**
 * Kernels of the distributed (DiLoCo-style) outer loop: the pseudo-gradient,
 * per-block int8 quantization of it for the wire, dequantization (optionally
 * accumulating, to sum several peers'), and the outer SGD-Nesterov step.
 *
 * Bit-exactness with the TypeScript twins in reference.ts:
 * - pseudoGradient and dequantizeInt8 (without accumulate): one correctly
 *   rounded f32 operation per element, bit-exact.
 * - quantizeInt8: bit-exact by construction. The scale is absmax * f32(1/127)
 *   (one rounded multiply, not a division, whose GPU accuracy WGSL leaves
 *   loose) and q = round(x / scale) is computed in integer arithmetic on the
 *   f32 bits (no GPU division), rounding half away from zero.
 * - dequantizeInt8 with accumulate and nesterovStep: multiplies followed by
 *   adds, which a GPU compiler may fuse into FMAs (the NVIDIA driver does;
 *   llvmpipe does not). A fused result skips the product's rounding, so it
 *   can differ from the twin by up to a rounding of the product: many ulps of
 *   a result that cancels (2048 for a dequantized sum on an H200). outer_test.ts
 *   holds CPU adapters to 2 ulp of the twins (they match to the bit) and every
 *   adapter to the error bound of any fused or separate f32 evaluation,
 *   relative to the magnitudes of the terms. The distributed run does not
 *   depend on these two: trainers and aggregators apply updates and the
 *   Nesterov step on the CPU with the twins (actors/aggregation.ts).
 *
 * Quantized layout: q is u32 words holding 4 int8 each, little-endian (element
 * 4w+j in byte j of word w), ceil(n/4) words, the last zero-padded; scales is
 * one f32 per block of `block` elements (default 256, a multiple of 4),
 * ceil(n/block) of them. A block whose absmax is below 2^-100 has scale 0 and
 * q 0; a block holding a NaN or infinity has scale NaN and q 0, so the bad
 * value shows up as NaN after dequantization.
 *
 * nesterovStep bakes lr and mu into the shader (one pipeline per pair, cached).
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { bindings, checkRef, checkShape, f32Lit, grid, slice, WG } from "./_wgsl.ts";
import { INV127, QUANT_BLOCK, QUANT_TINY } from "./reference.ts";
import { bindingChunk } from "./limits.ts";

const TINY_BITS = new Uint32Array(new Float32Array([QUANT_TINY]).buffer)[0];

/** Checks a quantized layout's shape: n values in blocks of `block`, 4 int8 per u32 word. */
function quantShape(kernel: string, shape: { n: number; block?: number }) {
  checkShape(kernel, shape, ["n"]);
  const { n } = shape;
  const block = shape.block ?? QUANT_BLOCK;
  if (!Number.isInteger(block) || block <= 0 || block % 4 !== 0) {
    throw new RangeError(
      `Cannot build ${kernel}: block must be a positive multiple of 4, got ${block}`,
    );
  }
  return { n, block, words: Math.ceil(n / 4), blocks: Math.ceil(n / block) };
}

/**
 * out = global - local over n floats.
 *
 * @example
 * ```ts ignore
 * gpu.run([pseudoGradient(gpu, { global: snapshot, local: params, out: delta }, { n })]);
 * ```
 */
export function pseudoGradient(
  gpu: Gpu,
  bufs: { global: TensorRef; local: TensorRef; out: TensorRef },
  shape: { n: number },
): Dispatch {
  const kernel = "pseudoGradient";
  checkShape(kernel, shape, ["n"], ["n"]);
  const { n } = shape;
  const refs = [
    slice(checkRef(kernel, "global", bufs.global, n), n),
    slice(checkRef(kernel, "local", bufs.local, n), n),
    slice(checkRef(kernel, "out", bufs.out, n), n),
  ];
  const g = grid(n);
  const code = `${bindings(["glob", "loc", "o"])}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * ${g.stride}u;
  if (i >= ${n}u) { return; }
  o[i] = glob[i] - loc[i];
}`;
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), refs, n ? g.groups : [0]);
}

/**
 * Per-block absmax int8 quantization of x [n] into q (u32 words) and scales;
 * see the module comment for the layout and rounding. One invocation per block.
 *
 * @example
 * ```ts ignore
 * gpu.run([quantizeInt8(gpu, { x: delta, q, scales }, { n, block: 256 })]);
 * ```
 */
export function quantizeInt8(
  gpu: Gpu,
  bufs: { x: TensorRef; q: TensorRef; scales: TensorRef },
  shape: { n: number; block?: number },
): Dispatch {
  const kernel = "quantizeInt8";
  const { n, block, words, blocks } = quantShape(kernel, shape);
  const refs = [
    slice(checkRef(kernel, "x", bufs.x, n), n),
    slice(checkRef(kernel, "q", bufs.q, words), words),
    slice(checkRef(kernel, "scales", bufs.scales, blocks), blocks),
  ];
  const g = grid(blocks, 64);
  const code = `@group(0) @binding(0) var<storage, read_write> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> q: array<u32>;
@group(0) @binding(2) var<storage, read_write> scales: array<f32>;
const N = ${n}u;
const BLOCK = ${block}u;

// round(|x| / scale) half away from zero, clamped to 127, as a two's
// complement byte; exact integer arithmetic on the f32 bits.
fn qbyte(xb: u32, sb: u32) -> u32 {
  let ax = xb & 0x7fffffffu;
  let ex = i32(ax >> 23u);
  if (ex == 0) { return 0u; }
  let k = ex - i32(sb >> 23u) + 1;
  if (k < 0) { return 0u; }
  var mag = 127u;
  if (k <= 8) {
    let mx = (ax & 0x7fffffu) | 0x800000u;
    let ms = (sb & 0x7fffffu) | 0x800000u;
    mag = min((((mx << u32(k)) / ms) + 1u) >> 1u, 127u);
  }
  if ((xb & 0x80000000u) != 0u) { return (256u - mag) & 0xffu; }
  return mag;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let blk = gid.x + gid.y * ${g.stride}u;
  if (blk >= ${blocks}u) { return; }
  let start = blk * BLOCK;
  let end = min(start + BLOCK, N);
  var amax = 0u;
  for (var k = 0u; k < BLOCK; k++) {
    let i = start + k;
    if (i >= end) { break; }
    amax = max(amax, x[i] & 0x7fffffffu);
  }
  var sb = 0u;
  var live = false;
  if (amax >= 0x7f800000u) {
    scales[blk] = bitcast<f32>((amax & 0u) | 0x7fc00000u);
  } else if (amax < ${TINY_BITS}u) {
    scales[blk] = 0.0;
  } else {
    let s = bitcast<f32>(amax) * ${f32Lit(INV127)};
    scales[blk] = s;
    sb = bitcast<u32>(s);
    live = true;
  }
  let w0 = start / 4u;
  let w1 = (end + 3u) / 4u;
  for (var w = w0; w < w1; w++) {
    var word = 0u;
    if (live) {
      for (var j = 0u; j < 4u; j++) {
        let i = w * 4u + j;
        if (i < end) { word = word | (qbyte(x[i], sb) << (8u * j)); }
      }
    }
    q[w] = word;
  }
}`;
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), refs, g.groups);
}

/**
 * out[i] = q[i] * scales[i / block] (or out[i] += that with accumulate), one
 * invocation per element.
 *
 * @example
 * ```ts ignore
 * gpu.run([dequantizeInt8(gpu, { q, scales, out: delta }, { n, block: 256, accumulate: true })]);
 * ```
 */
export function dequantizeInt8(
  gpu: Gpu,
  bufs: { q: TensorRef; scales: TensorRef; out: TensorRef },
  shape: { n: number; block?: number; accumulate?: boolean },
): Dispatch {
  const kernel = "dequantizeInt8";
  const { n, block, words, blocks } = quantShape(kernel, shape);
  const refs = [
    slice(checkRef(kernel, "q", bufs.q, words), words),
    slice(checkRef(kernel, "scales", bufs.scales, blocks), blocks),
    slice(checkRef(kernel, "out", bufs.out, n), n),
  ];
  const g = grid(n);
  const code = `@group(0) @binding(0) var<storage, read_write> q: array<u32>;
@group(0) @binding(1) var<storage, read_write> scales: array<f32>;
@group(0) @binding(2) var<storage, read_write> o: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * ${g.stride}u;
  if (i >= ${n}u) { return; }
  let byte = (q[i >> 2u] >> (8u * (i & 3u))) & 0xffu;
  let qi = bitcast<i32>(byte << 24u) >> 24u;
  let d = f32(qi) * scales[i / ${block}u];
  ${shape.accumulate ? "o[i] = o[i] + d;" : "o[i] = d;"}
}`;
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), refs, g.groups);
}

/**
 * Outer SGD with Nesterov momentum (PyTorch's form), delta the averaged
 * pseudo-gradient: momentum = mu * momentum + delta;
 * theta = theta - lr * (delta + mu * momentum).
 *
 * @example
 * ```ts ignore
 * gpu.run([nesterovStep(gpu, { theta: params, momentum, delta }, { n, lr: 0.7, mu: 0.9 })]);
 * ```
 */
export function nesterovStep(
  gpu: Gpu,
  bufs: { theta: TensorRef; momentum: TensorRef; delta: TensorRef },
  shape: { n: number; lr: number; mu: number },
): Dispatch {
  const kernel = "nesterovStep";
  checkShape(kernel, shape, ["n"], ["n"]);
  for (const k of ["lr", "mu"] as const) {
    if (!Number.isFinite(shape[k])) {
      throw new RangeError(`Cannot build ${kernel}: ${k} must be finite, got ${shape[k]}`);
    }
  }
  const { n } = shape;
  const refs = [
    slice(checkRef(kernel, "theta", bufs.theta, n), n),
    slice(checkRef(kernel, "momentum", bufs.momentum, n), n),
    slice(checkRef(kernel, "delta", bufs.delta, n), n),
  ];
  const g = grid(n);
  const code = `${bindings(["theta", "mom", "delta"])}
const LR = ${f32Lit(shape.lr)};
const MU = ${f32Lit(shape.mu)};
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * ${g.stride}u;
  if (i >= ${n}u) { return; }
  let d = delta[i];
  let m = MU * mom[i] + d;
  mom[i] = m;
  theta[i] = theta[i] - LR * (d + MU * m);
}`;
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), refs, n ? g.groups : [0]);
}

/**
 * Δ = θ_r − θ_local and its int8 code, as dispatches over ranges of at most
 * one binding (maxStorageBufferBindingSize) each: element-wise and per block,
 * so the bytes are those of one dispatch over the whole vector. The ranges
 * start at multiples of CHUNK_ALIGN floats, where the int8 words and the
 * scales start 256-byte aligned too.
 *
 * @example
 * ```ts ignore
 * gpu.run(outerDispatches(gpu, { global, local: model.paramBuffer, delta, q, scales }, {
 *   n: model.paramLength,
 *   block: 256,
 * }));
 * ```
 */
export function outerDispatches(
  gpu: Gpu,
  bufs: { global: GPUBuffer; local: GPUBuffer; delta: GPUBuffer; q: GPUBuffer; scales: GPUBuffer },
  shape: { n: number; block: number; chunk?: number },
): Dispatch[] {
  const { n, block } = shape;
  const chunk = shape.chunk ?? bindingChunk(gpu.limits.maxBindingBytes);
  if (chunk % block !== 0 || chunk % 64 !== 0 || (chunk / block) % 64 !== 0) {
    throw new RangeError(
      `Cannot build the outer kernels: chunk ${chunk} is not a multiple of 64 blocks of ${block}`,
    );
  }
  const out: Dispatch[] = [];
  for (let start = 0; start < n; start += chunk) {
    const len = Math.min(chunk, n - start);
    const at = (buffer: GPUBuffer, first: number, length: number) => ({
      buffer,
      offset: first * 4,
      length,
    });
    out.push(
      pseudoGradient(gpu, {
        global: at(bufs.global, start, len),
        local: at(bufs.local, start, len),
        out: at(bufs.delta, start, len),
      }, { n: len }),
      quantizeInt8(gpu, {
        x: at(bufs.delta, start, len),
        q: at(bufs.q, start / 4, Math.ceil(len / 4)),
        scales: at(bufs.scales, start / block, Math.ceil(len / block)),
      }, { n: len, block }),
    );
  }
  return out;
}
