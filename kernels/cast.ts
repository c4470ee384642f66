/**
 * The f32 <-> f16 conversion kernel: f32 tensors to f16 tensors (packed two
 * to a 4-byte word, as `array<f16>` lays them out) and back.
 *
 * It converts with integer operations on the bits, the WGSL twin of
 * kernels/half.ts, instead of WGSL's `f16()`: WGSL lets a conversion to f16
 * round to either neighbour, lets a value just beyond 65504 become 65504 or
 * infinity, and says nothing of NaN bits, while training needs the same bits
 * on every device (round to nearest even, overflow to infinity, NaN to the
 * quiet NaN of its sign). Needing no f16 arithmetic, it also runs on devices
 * without the `shader-f16` feature.
 *
 * @module
 */
import type { Dispatch, Gpu, TensorRef } from "./device.ts";
import { u } from "./_matmul_wgsl.ts";
import { halfWords } from "./half.ts";

/** The direction of {@linkcode cast}. */
export type CastTarget = "f16" | "f32";

const WORKGROUP = 256;

// f32 bits -> f16 bits; kernels/half.ts f32BitsToF16Bits, line for line.
const TO_F16 = `fn toF16(x: u32) -> u32 {
  let sign = (x >> 16u) & 0x8000u;
  let e = (x >> 23u) & 0xffu;
  let mant = x & 0x7fffffu;
  if (e == 0xffu) { return sign | select(0x7c00u, 0x7e00u, mant != 0u); }
  if (e >= 113u) {
    if (e > 142u) { return sign | 0x7c00u; }
    let h = ((e - 112u) << 10u) | (mant >> 13u);
    let rest = mant & 0x1fffu;
    return sign | select(h, h + 1u, rest > 0x1000u || (rest == 0x1000u && (h & 1u) == 1u));
  }
  if (e < 102u) { return sign; }
  let full = mant | 0x800000u;
  let shift = 126u - e;
  let h = full >> shift;
  let rest = full & ((1u << shift) - 1u);
  let halfway = 1u << (shift - 1u);
  return sign | select(h, h + 1u, rest > halfway || (rest == halfway && (h & 1u) == 1u));
}`;

// f16 bits -> f32 bits; kernels/half.ts f16BitsToF32Bits, line for line.
const TO_F32 = `fn toF32(h: u32) -> u32 {
  let sign = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let mant = h & 0x3ffu;
  if (e == 0x1fu) { return sign | select(0x7f800000u, 0x7fc00000u, mant != 0u); }
  if (e != 0u) { return sign | ((e + 112u) << 23u) | (mant << 13u); }
  if (mant == 0u) { return sign; }
  let p = firstLeadingBit(mant);
  return sign | ((p + 103u) << 23u) | ((mant << (23u - p)) & 0x7fffffu);
}`;

/**
 * Prepares the conversion of `n` values from `src` to `dst`. With `to: "f16"`,
 * `src` holds n f32 and `dst` ceil(n/2) words of packed f16 (the high half of
 * the last word zero when n is odd); with `to: "f32"` the other way round.
 * Both are bound as u32 words, so NaN payloads reach the conversion unchanged.
 *
 * @example Round three values to f16 and back
 * ```ts
 * import { acquireGpu } from "./device.ts";
 * import { cast } from "./cast.ts";
 * const gpu = await acquireGpu();
 * const x = gpu.storage(new Float32Array([0.1, 1, 70000]));
 * const h = gpu.storage(2);
 * const y = gpu.storage(3);
 * gpu.run([
 *   cast(gpu, { src: { buffer: x, length: 3 }, dst: { buffer: h, length: 2 } }, { n: 3, to: "f16" }),
 *   cast(gpu, { src: { buffer: h, length: 2 }, dst: { buffer: y, length: 3 } }, { n: 3, to: "f32" }),
 * ]);
 * console.log(await gpu.read(y, 3)); // Float32Array [0.0999755859375, 1, Infinity]
 * gpu.destroy();
 * ```
 */
export function cast(
  gpu: Gpu,
  bufs: { src: TensorRef; dst: TensorRef },
  shape: { n: number; to: CastTarget },
): Dispatch {
  const { n, to } = shape;
  if (!Number.isInteger(n) || n < 1 || n > 2 ** 30) {
    throw new RangeError(`Invalid cast shape: n must be an integer in 1..2^30, got ${n}`);
  }
  if (to !== "f16" && to !== "f32") {
    throw new TypeError(`Invalid cast target: ${to} (known: f16, f32)`);
  }
  const words = halfWords(n);
  const [srcLen, dstLen] = to === "f16" ? [n, words] : [words, n];
  for (const [name, ref, need] of [["src", bufs.src, srcLen], ["dst", bufs.dst, dstLen]] as const) {
    if (!ref?.buffer) throw new TypeError(`Invalid cast buffers: ${name} is missing`);
    if (ref.length < need) {
      throw new RangeError(`Invalid cast buffers: ${name} holds ${ref.length} < ${need} words`);
    }
  }
  // One invocation per output word: with f16 out each writes a whole word (two halves), so
  // no two invocations share one.
  const outputs = to === "f16" ? words : n;
  const body = to === "f16"
    ? `let lo = toF16(src[2u * i]);
  var hi = 0u;
  if (2u * i + 1u < ${u(n)}) { hi = toF16(src[2u * i + 1u]); }
  dst[i] = lo | (hi << 16u);`
    : `dst[i] = toF32((src[i / 2u] >> (16u * (i % 2u))) & 0xffffu);`;
  const code = `@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
${to === "f16" ? TO_F16 : TO_F32}
@compute @workgroup_size(${WORKGROUP}, 1, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let i = gid.y * nwg.x * ${u(WORKGROUP)} + gid.x;
  if (i >= ${u(outputs)}) { return; }
  ${body}
}
`;
  // Rows of at most 65535 workgroups (WebGPU's per-dimension minimum), as many as needed.
  const groups = Math.ceil(outputs / WORKGROUP);
  const x = Math.min(groups, 65535);
  const label = `cast_to_${to}_${n}`;
  const pipeline = gpu.pipeline(code, "main", label);
  return gpu.dispatch(label, pipeline, [
    { ...bufs.src, length: srcLen },
    { ...bufs.dst, length: dstLen },
  ], [x, Math.ceil(groups / x), 1]);
}
