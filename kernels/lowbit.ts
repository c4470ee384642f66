/**
 * Kernels of the 4-bit and top-k pseudo-gradient exchange, and the
 * trainer's error feedback around them; layouts and the rules they follow
 * are those of their TypeScript twins (kernels/lowbit_reference.ts), with
 * which every result here is bit-exact on any adapter: codes are integer
 * arithmetic on f32 bits (the int8 kernel's rounding, kernels/outer.ts), a
 * scale is one rounded multiply, a dequantized value one rounded multiply,
 * and error feedback is made of single adds and subtracts (no multiply-add
 * that a GPU compiler could fuse). lowbit_test.ts checks it on the adapter
 * it runs on (so far llvmpipe).
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { bindings, checkRef, checkShape, f32Lit, grid, slice, WG } from "./_wgsl.ts";
import { INV127, QUANT_TINY } from "./reference.ts";
import { codedSize, INV7, topkSlots } from "./lowbit_reference.ts";
import { type ExchangeFormat, topkPerBlock } from "./exchange_format.ts";
import { dequantizeInt8, pseudoGradient, quantizeInt8 } from "./outer.ts";
import { accumulate } from "./residual.ts";
import { bindingChunk } from "./limits.ts";

const TINY_BITS = new Uint32Array(new Float32Array([QUANT_TINY]).buffer)[0];

/**
 * WGSL: round(|x| / scale) half away from zero, clamped to maxq, from the
 * f32 bits of x and of a normal scale (the int8 kernel's exact integer form).
 * Also `blockScale`: a block's scale from its absmax bits (NaN, 0 or
 * absmax × inv), and whether the block is live (scale > 0).
 */
function codeWgsl(inv: number): string {
  return `
fn qmag(xb: u32, sb: u32, maxq: u32) -> u32 {
  let ax = xb & 0x7fffffffu;
  let ex = i32(ax >> 23u);
  if (ex == 0) { return 0u; }
  let k = ex - i32(sb >> 23u) + 1;
  if (k < 0) { return 0u; }
  var mag = maxq;
  if (k <= 8) {
    let mx = (ax & 0x7fffffu) | 0x800000u;
    let ms = (sb & 0x7fffffu) | 0x800000u;
    mag = min((((mx << u32(k)) / ms) + 1u) >> 1u, maxq);
  }
  return mag;
}

fn blockScale(amax: u32) -> f32 {
  if (amax >= 0x7f800000u) { return bitcast<f32>((amax & 0u) | 0x7fc00000u); }
  if (amax < ${TINY_BITS}u) { return 0.0; }
  return bitcast<f32>(amax) * ${f32Lit(inv)};
}`;
}

function blocksShape(kernel: string, shape: { n: number; block: number }, multiple: number) {
  checkShape(kernel, shape, ["n", "block"]);
  const { n, block } = shape;
  if (block % multiple !== 0) {
    throw new RangeError(
      `Cannot build ${kernel}: block must be a multiple of ${multiple}, got ${block}`,
    );
  }
  return { n, block, blocks: Math.ceil(n / block) };
}

/** A storage binding of a kernel: name, buffer range, elements, WGSL element type. */
type Bound = [name: string, ref: TensorRef, length: number, type: "u32" | "f32"];

/**
 * A kernel of `count` invocations in workgroups of `size`, each running
 * `body` with its index in `id` (after `prelude`'s declarations).
 */
function kernelOver(
  gpu: Gpu,
  kernel: string,
  bound: Bound[],
  grid_: { count: number; size: number },
  prelude: string,
  body: string,
): Dispatch {
  const refs = bound.map(([name, ref, len]) => slice(checkRef(kernel, name, ref, len), len));
  const g = grid(grid_.count, grid_.size);
  const code = `${bindings(bound.map(([name, , , type]): [string, string] => [name, type]))}
${prelude}
@compute @workgroup_size(${grid_.size})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let id = gid.x + gid.y * ${g.stride}u;
  if (id >= ${grid_.count}u) { return; }
${body}
}`;
  return gpu.dispatch(kernel, gpu.pipeline(code, "main", kernel), refs, g.groups);
}

/**
 * Per-block absmax 4-bit quantization of x [n] into q (u32 words of 8 codes)
 * and scales; one invocation per block, `block` a multiple of 8.
 *
 * @example
 * ```ts ignore
 * gpu.run([quantizeInt4(gpu, { x: delta, q, scales }, { n, block: 64 })]);
 * ```
 */
export function quantizeInt4(
  gpu: Gpu,
  bufs: { x: TensorRef; q: TensorRef; scales: TensorRef },
  shape: { n: number; block: number },
): Dispatch {
  const kernel = "quantizeInt4";
  const { n, block, blocks } = blocksShape(kernel, shape, 8);
  const bound: Bound[] = [
    ["x", bufs.x, n, "u32"],
    ["q", bufs.q, Math.ceil(n / 8), "u32"],
    ["scales", bufs.scales, blocks, "f32"],
  ];
  return kernelOver(
    gpu,
    kernel,
    bound,
    { count: blocks, size: 64 },
    codeWgsl(INV7),
    `
  let blk = id;
  let start = blk * ${block}u;
  let end = min(start + ${block}u, ${n}u);
  var amax = 0u;
  for (var i = start; i < end; i++) { amax = max(amax, x[i] & 0x7fffffffu); }
  let s = blockScale(amax);
  scales[blk] = s;
  let live = amax < 0x7f800000u && amax >= ${TINY_BITS}u;
  let sb = bitcast<u32>(s);
  for (var w = start / 8u; w < (end + 7u) / 8u; w++) {
    var word = 0u;
    for (var j = 0u; j < 8u; j++) {
      let i = w * 8u + j;
      if (live && i < end) {
        let xb = x[i];
        var c = qmag(xb, sb, 7u);
        if ((xb & 0x80000000u) != 0u) { c = (16u - c) & 0xfu; }
        word = word | (c << (4u * j));
      }
    }
    q[w] = word;
  }`,
  );
}

/**
 * out[i] = code[i] × scales[i / block], one invocation per element.
 *
 * @example
 * ```ts ignore
 * gpu.run([dequantizeInt4(gpu, { q, scales, out }, { n, block: 64 })]);
 * ```
 */
export function dequantizeInt4(
  gpu: Gpu,
  bufs: { q: TensorRef; scales: TensorRef; out: TensorRef },
  shape: { n: number; block: number },
): Dispatch {
  const kernel = "dequantizeInt4";
  const { n, block, blocks } = blocksShape(kernel, shape, 8);
  const bound: Bound[] = [
    ["q", bufs.q, Math.ceil(n / 8), "u32"],
    ["scales", bufs.scales, blocks, "f32"],
    ["o", bufs.out, n, "f32"],
  ];
  return kernelOver(
    gpu,
    kernel,
    bound,
    { count: n, size: WG },
    "",
    `
  let nib = (q[id >> 3u] >> (4u * (id & 7u))) & 0xfu;
  let c = bitcast<i32>(nib << 28u) >> 28u;
  o[id] = f32(c) * scales[id / ${block}u];`,
  );
}

/** Per-block counts of a top-k layout over n values. */
function topkShape(kernel: string, shape: { n: number; block: number; fraction: number }) {
  const { n, block, blocks } = blocksShape(kernel, shape, 4);
  if (block > 256) {
    throw new RangeError(`Cannot build ${kernel}: block must be at most 256, got ${block}`);
  }
  if (!(shape.fraction > 0 && shape.fraction <= 1)) {
    throw new RangeError(
      `Cannot build ${kernel}: fraction must be in (0, 1], got ${shape.fraction}`,
    );
  }
  const k = topkPerBlock(shape.fraction, block);
  const kLast = topkPerBlock(shape.fraction, n - (blocks - 1) * block);
  return { n, block, blocks, k, kLast, slots: topkSlots(n, shape).slots };
}

/**
 * Per block, the topkPerBlock(F, len) values largest in magnitude (ties: the
 * lower offset) as slots (offset | int8 code << 8) in increasing offset, and
 * the block's int8 scale; one invocation per block. The k-th largest
 * magnitude is found by a binary search over the f32 bits (32 counting passes
 * over the block), so no sort and no loop without a bound.
 *
 * @example
 * ```ts ignore
 * gpu.run([selectTopk(gpu, { x: delta, slots, scales }, { n, block: 256, fraction: 0.05 })]);
 * ```
 */
export function selectTopk(
  gpu: Gpu,
  bufs: { x: TensorRef; slots: TensorRef; scales: TensorRef },
  shape: { n: number; block: number; fraction: number },
): Dispatch {
  const kernel = "selectTopk";
  const { n, block, blocks, k, kLast, slots } = topkShape(kernel, shape);
  const bound: Bound[] = [
    ["x", bufs.x, n, "u32"],
    ["slots", bufs.slots, slots, "u32"],
    ["scales", bufs.scales, blocks, "f32"],
  ];
  const prelude = `${codeWgsl(INV127)}

// How many of the block's magnitudes (f32 bits) are at least t.
fn atLeast(start: u32, end: u32, t: u32) -> u32 {
  var c = 0u;
  for (var i = start; i < end; i++) { c += select(0u, 1u, (x[i] & 0x7fffffffu) >= t); }
  return c;
}`;
  return kernelOver(
    gpu,
    kernel,
    bound,
    { count: blocks, size: 64 },
    prelude,
    `
  let blk = id;
  let start = blk * ${block}u;
  let end = min(start + ${block}u, ${n}u);
  let kb = select(${k}u, ${kLast}u, blk == ${blocks - 1}u);
  let base = blk * ${k}u;
  var amax = 0u;
  for (var i = start; i < end; i++) { amax = max(amax, x[i] & 0x7fffffffu); }
  let s = blockScale(amax);
  scales[blk] = s;
  if (amax >= 0x7f800000u || amax < ${TINY_BITS}u) {
    for (var j = 0u; j < kb; j++) { slots[base + j] = j; }
    return;
  }
  // The largest t with at least kb magnitudes >= t: the kb-th largest.
  var lo = 0u;
  var hi = 0x7f800000u;
  for (var it = 0u; it < 32u; it++) {
    if (hi - lo <= 1u) { break; }
    let mid = lo + (hi - lo) / 2u;
    if (atLeast(start, end, mid) >= kb) { lo = mid; } else { hi = mid; }
  }
  let ties = kb - atLeast(start, end, lo + 1u);
  let sb = bitcast<u32>(s);
  var out = 0u;
  var tied = 0u;
  for (var i = start; i < end; i++) {
    let xb = x[i];
    let m = xb & 0x7fffffffu;
    var take = m > lo;
    if (m == lo && tied < ties) {
      take = true;
      tied++;
    }
    if (take) {
      var c = qmag(xb, sb, 127u);
      if ((xb & 0x80000000u) != 0u) { c = (256u - c) & 0xffu; }
      slots[base + out] = (i - start) | (c << 8u);
      out++;
    }
  }`,
  );
}

/**
 * out[i] = code × scale where a slot of i's block names i, else 0; one
 * invocation per element (a later slot naming the same offset wins).
 *
 * @example
 * ```ts ignore
 * gpu.run([dequantizeTopk(gpu, { slots, scales, out }, { n, block: 256, fraction: 0.05 })]);
 * ```
 */
export function dequantizeTopk(
  gpu: Gpu,
  bufs: { slots: TensorRef; scales: TensorRef; out: TensorRef },
  shape: { n: number; block: number; fraction: number },
): Dispatch {
  const kernel = "dequantizeTopk";
  const { n, block, blocks, k, kLast, slots } = topkShape(kernel, shape);
  const bound: Bound[] = [
    ["slots", bufs.slots, slots, "u32"],
    ["scales", bufs.scales, blocks, "f32"],
    ["o", bufs.out, n, "f32"],
  ];
  return kernelOver(
    gpu,
    kernel,
    bound,
    { count: n, size: WG },
    "",
    `
  let blk = id / ${block}u;
  let off = id % ${block}u;
  let kb = select(${k}u, ${kLast}u, blk == ${blocks - 1}u);
  var d = 0.0f;
  for (var j = 0u; j < kb; j++) {
    let w = slots[blk * ${k}u + j];
    if ((w & 0xffu) == off) {
      let c = bitcast<i32>(((w >> 8u) & 0xffu) << 24u) >> 24u;
      d = f32(c) * scales[blk];
    }
  }
  o[id] = d;`,
  );
}

/**
 * Encodes x [n] in format f into codes (int8/int4 words or top-k slots) and
 * scales.
 *
 * @example
 * ```ts ignore
 * gpu.run([encodeDispatch(gpu, parseExchange("int4"), { x, codes, scales }, n)]);
 * ```
 */
export function encodeDispatch(
  gpu: Gpu,
  f: ExchangeFormat,
  bufs: { x: TensorRef; codes: TensorRef; scales: TensorRef },
  n: number,
): Dispatch {
  const { x, codes, scales } = bufs;
  if (f.kind === "int8") return quantizeInt8(gpu, { x, q: codes, scales }, { n, block: f.block });
  if (f.kind === "int4") return quantizeInt4(gpu, { x, q: codes, scales }, { n, block: f.block });
  return selectTopk(gpu, { x, slots: codes, scales }, { n, ...f });
}

/**
 * Decodes codes and scales of format f into out [n].
 *
 * @example
 * ```ts ignore
 * gpu.run([decodeDispatch(gpu, parseExchange("int4"), { codes, scales, out }, n)]);
 * ```
 */
export function decodeDispatch(
  gpu: Gpu,
  f: ExchangeFormat,
  bufs: { codes: TensorRef; scales: TensorRef; out: TensorRef },
  n: number,
): Dispatch {
  const { codes, scales, out } = bufs;
  if (f.kind === "int8") {
    return dequantizeInt8(gpu, { q: codes, scales, out }, { n, block: f.block });
  }
  if (f.kind === "int4") {
    return dequantizeInt4(gpu, { q: codes, scales, out }, { n, block: f.block });
  }
  return dequantizeTopk(gpu, { slots: codes, scales, out }, { n, ...f });
}

/** `length` 4-byte elements of `buffer` from element `first`. */
function elements(buffer: GPUBuffer, first: number, length: number): TensorRef {
  return { buffer, offset: first * 4, length };
}

/** The first code word (or slot) of the value at `start`, a multiple of the format's block. */
function codeStart(f: ExchangeFormat, start: number): number {
  if (f.kind === "int8") return start / 4;
  if (f.kind === "int4") return start / 8;
  return (start / f.block) * topkPerBlock(f.fraction, f.block);
}

/**
 * The trainer's round with error feedback, as dispatches over ranges of at
 * most one binding each (like outerDispatches, kernels/outer.ts):
 * Δ = θ_r − θ_local; x = Δ + residual (in `delta`); codes of x;
 * residual = x − decoded(codes) (decoded through `sent`); then `delta` is
 * set back to the plain Δ, which an overlapped trainer's merge needs
 * (kernels/overlap_merge.ts: the local progress the update replaces, not what
 * was sent of it). The twin is feedbackEncodeRef (kernels/lowbit_reference.ts);
 * `residual` starts zeroed and lives as long as the buffer.
 *
 * @example
 * ```ts ignore
 * gpu.run(feedbackDispatches(gpu, parseExchange("int4"), {
 *   global, local: model.paramBuffer, delta, sent, residual, codes, scales,
 * }, { n: model.paramLength }));
 * ```
 */
export function feedbackDispatches(
  gpu: Gpu,
  f: ExchangeFormat,
  bufs: {
    global: GPUBuffer;
    local: GPUBuffer;
    delta: GPUBuffer;
    sent: GPUBuffer;
    residual: GPUBuffer;
    codes: GPUBuffer;
    scales: GPUBuffer;
  },
  shape: { n: number; chunk?: number },
): Dispatch[] {
  const { n } = shape;
  const chunk = shape.chunk ?? bindingChunk(gpu.limits.maxBindingBytes);
  if (chunk % f.block !== 0 || (chunk / f.block) % 64 !== 0) {
    throw new RangeError(
      `Cannot build the feedback kernels: chunk ${chunk} is not a multiple of 64 blocks of ${f.block}`,
    );
  }
  const out: Dispatch[] = [];
  for (let start = 0; start < n; start += chunk) {
    const len = Math.min(chunk, n - start);
    const v = (buffer: GPUBuffer) => elements(buffer, start, len);
    const coded = {
      codes: elements(bufs.codes, codeStart(f, start), codedSize(len, f).words),
      scales: elements(bufs.scales, start / f.block, Math.ceil(len / f.block)),
    };
    out.push(
      pseudoGradient(gpu, { global: v(bufs.global), local: v(bufs.local), out: v(bufs.delta) }, {
        n: len,
      }),
      accumulate(gpu, { dst: v(bufs.delta), src: v(bufs.residual) }, { n: len }),
      encodeDispatch(gpu, f, { x: v(bufs.delta), ...coded }, len),
      decodeDispatch(gpu, f, { ...coded, out: v(bufs.sent) }, len),
      pseudoGradient(gpu, { global: v(bufs.delta), local: v(bufs.sent), out: v(bufs.residual) }, {
        n: len,
      }),
      pseudoGradient(gpu, { global: v(bufs.global), local: v(bufs.local), out: v(bufs.delta) }, {
        n: len,
      }),
    );
  }
  return out;
}
