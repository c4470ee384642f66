import { deepEqual, equal, throws } from "@std/assert";
import { sameBits } from "./_testing.ts";
import { type Case, FULL_COMBOS, type Inputs, inputs, PLAIN, run } from "./_matmul_testing.ts";
import { acquireGpu } from "./device.ts";
import { cast } from "./cast.ts";
import {
  f16BitsToF32Bits,
  f32BitsToF16Bits,
  halfWords,
  packHalves,
  roundToF16,
  toF16Bits,
} from "./half.ts";
import { defaultVariant, matmul } from "./matmul.ts";

// The f16 matmuls need shader-f16 (Vulkan has it, the GL backend does not); the cast kernel
// and the refusal run everywhere.
const probe = await acquireGpu();
const HAS_F16 = probe.hasF16;
const ADAPTER = `${probe.adapter.description}, backend ${probe.adapter.backend}`;
probe.destroy();
if (!HAS_F16) {
  console.log(`Skipping the f16 matmul tests: the device lacks shader-f16 (${ADAPTER})`);
}

const U32 = 2 ** -24; // f32's unit roundoff

/**
 * The error bound of one output. A product of two f16 values is exact in f32 (11 + 11
 * significand bits <= 24; exponents from 2^-48 to 2^32, inside f32's normal range), and
 * WGSL's f32 addition rounds correctly; whether the kernel's fma fuses or not, each step
 * rounds once. So an output is an f32 sum of exact terms (k products, then per split-K
 * partial sum, bias and the accumulated C), by a summation tree of depth at most
 * k + splits + 2, and Higham's bound for recursive summation gives
 *   |computed - exact| <= gamma(d) * sum |terms|,  gamma(d) = d·u / (1 - d·u),  u = 2^-24,
 * with d = k + splits + 2. With one operand f32 a product may round once too (unless fused):
 * one more level, d = k + splits + 3. An f16 output then rounds once more; WGSL lets that
 * conversion take either neighbour, so it adds up to one f16 ulp: 2^-10 of the value, or
 * 2^-24 below 2^-14. With k = 257 the bound is about 1.6e-5 of the magnitude, so a product
 * dropped or counted twice (of the order of the magnitude / k) shows.
 */
function bound(magnitude: number, exact: number, depth: number, f16Out: boolean): number {
  const f32 = ((depth * U32) / (1 - depth * U32)) * magnitude;
  return f16Out ? f32 + 2 ** -10 * (Math.abs(exact) + f32) + 2 ** -24 : f32;
}

/** The first output off the f64 reference by more than {@linkcode bound}, or null. */
function mismatch(got: Float32Array, x: Inputs, cs: Case, splits: number): string | null {
  const { m, n, k } = cs;
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let exact = 0, mag = 0;
      for (let kk = 0; kk < k; kk++) {
        const a = cs.transA ? x.a[kk * m + i] : x.a[i * k + kk];
        const b = cs.transB ? x.b[j * k + kk] : x.b[kk * n + j];
        exact += a * b;
        mag += Math.abs(a * b);
      }
      const extra = (cs.bias ? x.bias[j] : 0) + (cs.accumulate ? x.c[i * n + j] : 0);
      exact += extra;
      mag += Math.abs(cs.bias ? x.bias[j] : 0) + Math.abs(cs.accumulate ? x.c[i * n + j] : 0);
      const err = Math.abs(got[i * n + j] - exact);
      const depth = k + splits + (cs.aType === cs.bType ? 2 : 3);
      const tol = bound(mag, exact, depth, cs.cType === "f16");
      if (!(err <= tol)) {
        return `c[${i},${j}]: got ${got[i * n + j]}, want ${exact} (error ${err} > bound ${tol})`;
      }
    }
  }
  return null;
}

// Odd sizes (scalar loads and stores, partial tiles), one row, k = 1, and multiples of 4
// (vec4<f16> loads, vec4 stores along every operand's contiguous dimension).
const SHAPES = [
  { m: 67, n: 130, k: 257 },
  { m: 1, n: 33, k: 70 },
  { m: 45, n: 17, k: 1 },
  { m: 132, n: 68, k: 36 },
];

const LAYOUTS = [[false, false], [true, false], [false, true]] as const;

/** Both inputs in f16 (the forward pass), and one of them (a gradient's f32 operand). */
const STORAGES: Pick<Case, "aType" | "bType">[] = [
  { aType: "f16", bType: "f16" },
  { aType: "f16", bType: "f32" },
  { aType: "f32", bType: "f16" },
];

const VARIANTS: [string, number][] = [
  ["tile128", 1],
  ["tile128x64", 1],
  ["tile64", 1],
  ["tile64x128", 1],
  ["tile64s4", 4],
  ["tile128s3", 3],
];

Deno.test({
  name: "f16 matmul variants stay within the f32-summation bound in every layout",
  ignore: !HAS_F16,
  fn: async () => {
    const gpu = await acquireGpu();
    try {
      const failures: string[] = [];
      let seed = 3000;
      for (const [variant, splits] of VARIANTS) {
        for (const shape of SHAPES) {
          for (const [transA, transB] of LAYOUTS) {
            // Cycle through the input storages, the output storage and the bias; the weight
            // gradient's layout (Aᵀ) accumulates, as the model's dW += xᵀ·dy does.
            const cs: Case = {
              ...PLAIN,
              ...shape,
              transA,
              transB,
              accumulate: transA,
              bias: Math.floor(seed / 6) % 2 === 0,
              ...STORAGES[seed % 3],
              cType: seed % 2 ? "f16" : "f32",
            };
            const x = inputs(cs, seed++);
            const got = await run(gpu, variant, cs, x);
            const f = mismatch(got.c, x, cs, splits);
            if (f) failures.push(`${variant} ${JSON.stringify(cs)}: ${f}`);
          }
        }
      }
      deepEqual(failures.slice(0, 5), []);
    } finally {
      gpu.destroy();
    }
  },
});

Deno.test({
  name: "f16 inputs give the f32 kernel's bits on the same values, fused epilogues included",
  ignore: !HAS_F16,
  fn: async () => {
    // Exact products summed in the same k order: the f16 tiles (twice as deep in k) must not
    // change a bit of any output, pre-activation or column sum of an unsplit variant.
    const gpu = await acquireGpu();
    try {
      const failures: string[] = [];
      let seed = 4000;
      for (const variant of ["tile128", "tile128x64", "tile64"]) {
        for (const combo of FULL_COMBOS) {
          // Odd sizes and multiples of 4 in turn: scalar and vec4 loads and stores.
          const shape = seed % 2 ? SHAPES[0] : SHAPES[3];
          const cs: Case = { ...shape, ...combo, ...STORAGES[seed % 3] };
          const x = inputs(cs, seed++);
          const half = await run(gpu, variant, cs, x);
          const full = await run(gpu, variant, { ...cs, aType: "f32", bType: "f32" }, x);
          for (const key of ["c", "pre", "colSum"] as const) {
            if (!sameBits(half[key], full[key])) {
              failures.push(`${variant} ${JSON.stringify(cs)} ${key}`);
            }
          }
        }
      }
      deepEqual(failures, []);
    } finally {
      gpu.destroy();
    }
  },
});

Deno.test({
  name: "f16 output of an f16 matmul is the f32 result rounded to a neighbouring f16",
  ignore: !HAS_F16,
  fn: async () => {
    const gpu = await acquireGpu();
    try {
      for (const variant of ["tile64", "tile64s4"]) {
        const cs: Case = { ...FULL_COMBOS[0], m: 37, n: 44, k: 300, ...STORAGES[0] };
        const x = inputs({ ...cs, cType: "f16" }, 5000);
        const f32 = await run(gpu, variant, cs, x);
        const f16 = await run(gpu, variant, { ...cs, cType: "f16" }, x);
        const i = f16.c.findIndex((v, i) => {
          const r = roundToF16(new Float32Array([f32.c[i]]))[0];
          // Either neighbour of the f32 value: at most one f16 ulp from its nearest.
          return !(Math.abs(v - r) <= Math.max(2 ** -10 * Math.abs(r), 2 ** -24));
        });
        equal(i, -1, `${variant}: c[${i}] = ${f16.c[i]}, f32 result ${f32.c[i]}`);
      }
    } finally {
      gpu.destroy();
    }
  },
});

Deno.test("f16 matmul default picks tile variants on every adapter class", () => {
  // llvmpipe: the CPU-shaped defaults have no f16 form.
  equal(
    defaultVariant({ isCpu: true }, { m: 4096, n: 768, k: 768, aType: "f16" }),
    "tile128x64",
  );
  equal(
    defaultVariant({ isCpu: true }, { m: 256, n: 1024, k: 4096, cType: "f16" }),
    "tile64s9",
  );
  equal(defaultVariant({ isCpu: true }, { m: 4096, n: 768, k: 768 }), "reg32x16v");
});

Deno.test("f16 matmul is refused with the missing feature named, and on variants without an f16 form", async () => {
  // A device without shader-f16, as the GL backend gives.
  const gpu = await acquireGpu({ f16: false });
  try {
    equal(gpu.hasF16, false);
    const buf = gpu.storage(16);
    const ref = { buffer: buf, length: 16 };
    const shape = { m: 2, n: 2, k: 2 };
    throws(() => matmul(gpu, { a: ref, b: ref, c: ref }, { ...shape, aType: "f16" }), {
      name: "TypeError",
      message: /Cannot build f16 matmul: the device lacks the shader-f16 feature/,
    });
    throws(() => matmul(gpu, { a: ref, b: ref, c: ref }, { ...shape, cType: "f16" }), {
      message: /shader-f16/,
    });
    throws(
      () => matmul(gpu, { a: ref, b: ref, c: ref }, { ...shape, bType: "f64" as "f32" }),
      { name: "TypeError", message: /Invalid matmul bType: f64/ },
    );
    buf.destroy();
  } finally {
    gpu.destroy();
  }
  if (!HAS_F16) return;
  const f16 = await acquireGpu();
  try {
    const buf = f16.storage(16);
    const ref = { buffer: buf, length: 16 };
    for (const variant of ["reg32x16v", "naive", "tiled"]) {
      throws(
        () => matmul(f16, { a: ref, b: ref, c: ref }, { m: 2, n: 2, k: 2, variant, bType: "f16" }),
        { name: "TypeError", message: new RegExp(`${variant} has no f16 form`) },
      );
    }
    buf.destroy();
  } finally {
    f16.destroy();
  }
});

Deno.test("acquireGpu requests shader-f16 where the adapter offers it", async () => {
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  const gpu = await acquireGpu();
  try {
    equal(gpu.hasF16, adapter?.features.has("shader-f16") ?? false);
  } finally {
    gpu.destroy();
  }
});

// f32 bits -> f16 bits at the edges: rounding ties, subnormals, overflow, signed zero, NaN.
const EDGES: [number, number][] = [
  [0x00000000, 0x0000], // +0
  [0x80000000, 0x8000], // -0
  [0x3f800000, 0x3c00], // 1
  [0x3f801000, 0x3c00], // 1 + 2^-11: a tie, to even (down)
  [0x3f803000, 0x3c02], // 1 + 3·2^-11: a tie, to even (up)
  [0x3f801001, 0x3c01], // just above the tie: up
  [0x477fe000, 0x7bff], // 65504, the largest f16
  [0x477fefff, 0x7bff], // just below 65520: down to 65504
  [0x477ff000, 0x7c00], // 65520: a tie, to even, which is infinity
  [0x47800000, 0x7c00], // 65536
  [0xc7800000, 0xfc00], // -65536
  [0x7f7fffff, 0x7c00], // the largest f32
  [0x7f800000, 0x7c00], // +inf
  [0xff800000, 0xfc00], // -inf
  [0x7fc00000, 0x7e00], // NaN
  [0x7f800001, 0x7e00], // a signalling NaN: quiet
  [0xffc00001, 0xfe00], // -NaN with a payload
  [0x38800000, 0x0400], // 2^-14, the smallest normal f16
  [0x387fe000, 0x0400], // 2^-14 - 2^-25: a tie between 0x3ff and 0x400, to even
  [0x33800000, 0x0001], // 2^-24, the smallest subnormal
  [0x33000000, 0x0000], // 2^-25: a tie, to even (zero)
  [0x33000001, 0x0001], // just above 2^-25: up
  [0xb3000001, 0x8001], // its negative
  [0x33c00000, 0x0002], // 3·2^-25: a tie, to even (2·2^-24)
  [0x34400000, 0x0003], // 3·2^-24, exact
  [0x32ffffff, 0x0000], // below 2^-25
  [0x00000001, 0x0000], // the smallest f32 subnormal
  [0x387fc000, 0x03ff], // the largest subnormal
];

/** EDGES' inputs followed by `count` seeded random bit patterns (NaNs included). */
function edgeAndRandomBits(count: number): Uint32Array {
  const bits = new Uint32Array(EDGES.length + count);
  EDGES.forEach(([x], i) => (bits[i] = x));
  let s = 12345;
  for (let i = EDGES.length; i < bits.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    bits[i] = s;
  }
  return bits;
}

Deno.test("f32 to f16 in TypeScript rounds to nearest even, to infinity, to quiet NaN", () => {
  for (const [x, h] of EDGES) {
    equal(f32BitsToF16Bits(x).toString(16), h.toString(16), `f32 0x${x.toString(16)}`);
  }
  // Every non-NaN value against the engine's own f16 rounding.
  const bits = edgeAndRandomBits(200_000);
  const values = new Float32Array(bits.buffer);
  const engine = new Uint16Array(new Float16Array(values).buffer);
  const i = toF16Bits(values).findIndex((h, i) => !Number.isNaN(values[i]) && h !== engine[i]);
  equal(i, -1, `0x${bits[i]?.toString(16)}`);
  // f16 -> f32 is exact: every f16 but NaN against Float16Array, and back to the same bits.
  for (let h = 0; h < 0x10000; h++) {
    const f = new Float32Array(new Uint32Array([f16BitsToF32Bits(h)]).buffer)[0];
    const isNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
    if (isNaN) {
      equal(f16BitsToF32Bits(h), h & 0x8000 ? 0xffc00000 : 0x7fc00000, `f16 0x${h.toString(16)}`);
      continue;
    }
    const want = new Float16Array(new Uint16Array([h]).buffer)[0];
    if (!Object.is(f, want) || f32BitsToF16Bits(f16BitsToF32Bits(h)) !== h) {
      throw new Error(`f16 0x${h.toString(16)}: ${f}, want ${want}`);
    }
  }
});

Deno.test("cast kernel gives the TypeScript twin's bits both ways", async () => {
  const gpu = await acquireGpu();
  try {
    // f32 -> f16: the edges and random patterns, an odd count (the last word half empty).
    const bits = edgeAndRandomBits(100_001);
    const n = bits.length;
    const src = gpu.storage(bits);
    const dst = gpu.storage(halfWords(n) + 1);
    gpu.write(dst, new Uint32Array(halfWords(n) + 1).fill(0xdeadbeef));
    gpu.run([cast(gpu, {
      src: { buffer: src, length: n },
      dst: { buffer: dst, length: halfWords(n) },
    }, { n, to: "f16" })]);
    const bytes = await gpu.readBytes(dst, (halfWords(n) + 1) * 4);
    const got = new Uint32Array(bytes.buffer, bytes.byteOffset, halfWords(n) + 1);
    const want = packHalves(Uint16Array.from(bits, f32BitsToF16Bits));
    const i = want.findIndex((w, i) => got[i] !== w);
    equal(i, -1, `word ${i}: got 0x${got[i]?.toString(16)}, want 0x${want[i]?.toString(16)}`);
    equal(got[halfWords(n)], 0xdeadbeef, "wrote past the output");
    src.destroy();
    dst.destroy();
    // f16 -> f32: all 65536 bit patterns, and one more to make the count odd.
    const all = Uint16Array.from({ length: 0x10001 }, (_, h) => h & 0xffff);
    const hs = gpu.storage(packHalves(all));
    const out = gpu.storage(all.length);
    gpu.run([cast(gpu, {
      src: { buffer: hs, length: halfWords(all.length) },
      dst: { buffer: out, length: all.length },
    }, { n: all.length, to: "f32" })]);
    const back = await gpu.readBytes(out, all.length * 4);
    const f32 = new Uint32Array(back.buffer, back.byteOffset, all.length);
    const j = f32.findIndex((v, h) => v !== f16BitsToF32Bits(all[h]));
    equal(j, -1, `f16 0x${all[j]?.toString(16)}: got 0x${f32[j]?.toString(16)}`);
    hs.destroy();
    out.destroy();
  } finally {
    gpu.destroy();
  }
});

Deno.test("cast rejects bad sizes and targets with one-line errors", async () => {
  const gpu = await acquireGpu();
  try {
    const buf = gpu.storage(4);
    const ref = { buffer: buf, length: 4 };
    throws(() => cast(gpu, { src: ref, dst: ref }, { n: 0, to: "f16" }), {
      name: "RangeError",
      message: /Invalid cast shape: n must be an integer/,
    });
    throws(() => cast(gpu, { src: ref, dst: ref }, { n: 4, to: "bf16" as "f16" }), {
      name: "TypeError",
      message: /Invalid cast target: bf16/,
    });
    throws(() => cast(gpu, { src: ref, dst: ref }, { n: 9, to: "f16" }), {
      name: "RangeError",
      message: /Invalid cast buffers: src holds 4 < 9 words/,
    });
    buf.destroy();
  } finally {
    gpu.destroy();
  }
});
