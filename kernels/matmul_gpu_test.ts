import { deepEqual, equal, throws } from "@std/assert";
import {
  type Case,
  FULL_COMBOS,
  type Inputs,
  inputs,
  type Outputs,
  PLAIN,
  run,
} from "./_matmul_testing.ts";
import { acquireGpu, type Gpu } from "./device.ts";
import { defaultVariant, matmul, matmulReference } from "./matmul.ts";
import { gpuDefaultVariant } from "./matmul_gpu.ts";
import { geluBackwardRef, geluForwardRef } from "./reference.ts";

/**
 * The fused matmul from the plain reference and the element-wise references; with `abs`,
 * the same sums over absolute values (the magnitude f32 rounding scales with).
 */
function reference(x: Inputs, cs: Case, abs = false): Outputs {
  const f = (v: Float32Array) => (abs ? v.map(Math.abs) : v);
  const { m, n, k } = cs;
  const b = f(x.b), res = f(x.res), c0 = f(x.c);
  const v = matmulReference(
    { a: f(x.a), b, c: new Float32Array(m * n), bias: cs.bias ? f(x.bias) : undefined },
    { ...cs, accumulate: false },
  );
  if (cs.residual) v.set(v.map((y, i) => y + res[i]));
  let out = v;
  const pre = f(x.pre).slice();
  if (cs.epilogue === "gelu") {
    pre.set(v);
    out = new Float32Array(m * n);
    if (abs) out.set(v.map((y) => 1.2 * y));
    else geluForwardRef({ inp: v, out }, { n: m * n });
  } else if (cs.epilogue === "geluBackward") {
    out = new Float32Array(m * n);
    if (abs) out.set(v.map((y) => 1.2 * y));
    else geluBackwardRef({ dinp: out, inp: x.pre, dout: v }, { n: m * n });
  }
  const c = cs.accumulate ? out.map((y, i) => y + c0[i]) : out;
  const colSum = f(x.colSum).slice();
  if (cs.colSum) {
    for (let j = 0; j < n; j++) {
      for (let kk = 0; kk < k; kk++) {
        colSum[j] += cs.transB ? b[j * k + kk] : b[kk * n + j];
      }
    }
  }
  return { c, pre, colSum };
}

// f32 sums of k products err by about sqrt(k) ulps of the sum of their magnitudes; 2e-5 of
// that magnitude allows k in the thousands yet flags a product dropped or counted twice.
const REL_TOL = 2e-5;

/** The first element of `got` off `want` by more than the tolerance, as a message, or null. */
function mismatch(got: Outputs, want: Outputs, scale: Outputs, what: string): string | null {
  for (const key of ["c", "pre", "colSum"] as const) {
    const i = got[key].findIndex((g, i) =>
      !(Math.abs(g - want[key][i]) <= REL_TOL * scale[key][i] + 1e-6)
    );
    if (i >= 0) {
      return `${what} ${key}[${i}]: got ${got[key][i]}, want ${want[key][i]} scale ${
        scale[key][i]
      }`;
    }
  }
  return null;
}

/** Runs a case and compares it with the reference; returns a failure line or null. */
async function check(gpu: Gpu, variant: string, cs: Case, seed: number): Promise<string | null> {
  const x = inputs(cs, seed);
  const got = await run(gpu, variant, cs, x);
  return mismatch(
    got,
    reference(x, cs),
    reference(x, cs, true),
    `${variant} ${JSON.stringify(cs)}`,
  );
}

/** The combinations kernels/model.ts builds, by layout and optional buffers. */
const MODEL_COMBOS: Omit<Case, "m" | "n" | "k">[] = [
  { ...PLAIN, bias: true }, // qkv = x·W + b
  { ...PLAIN, bias: true, residual: true }, // residual2 = residual + atty·W + b
  { ...PLAIN, bias: true, epilogue: "gelu" }, // fch, gelu(fch)
  { ...PLAIN, transB: true }, // logits = lnf·wteᵀ, dx = dy·Wᵀ
  { ...PLAIN }, // dlnf = dlogits·wte
  { ...PLAIN, transB: true, epilogue: "geluBackward" }, // dfch = dy·Wᵀ·gelu'(fch)
  { ...PLAIN, transA: true, accumulate: true }, // dwte += dlogitsᵀ·lnf
  { ...PLAIN, transA: true, accumulate: true, colSum: true }, // dW += xᵀ·dy, db += Σ dy
];

// Odd sizes (not multiples of any tile, scalar loads and stores) and multiples of 4 (vec4
// loads and stores along every operand's contiguous dimension).
const SHAPES = [{ m: 67, n: 130, k: 257 }, { m: 1, n: 3, k: 1 }, { m: 132, n: 68, k: 36 }];

// The GL backend (llvmpipe behind GLSL) compiles these modules slowly: one split-K module took
// 35-90 s here, and the whole matrix ran for over 40 minutes. There the tile variants check the
// model's layouts on the odd shape, and split-K is left to Vulkan (CI's backend) and to GPUs.
const GL = Deno.env.get("DENO_WEBGPU_BACKEND") === "gl";

const VARIANTS = ["tile128", "tile128x64", "tile64", "tile64x128", "tile64s4", "tile128s3"];

Deno.test("GPU matmul variants match the reference in every layout and fused epilogue", async () => {
  const gpu = await acquireGpu();
  try {
    const failures: string[] = [];
    let seed = 1000;
    for (const variant of GL ? VARIANTS.filter((v) => !/s\d+$/.test(v)) : VARIANTS) {
      for (const shape of GL ? SHAPES.slice(0, 1) : SHAPES) {
        for (const combo of GL ? MODEL_COMBOS : [...MODEL_COMBOS, ...FULL_COMBOS]) {
          const f = await check(gpu, variant, { ...shape, ...combo }, seed++);
          if (f) failures.push(f);
        }
      }
    }
    deepEqual(failures.slice(0, 5), []);
  } finally {
    gpu.destroy();
  }
});

Deno.test({
  name: "split-K handles a long k with a tiny output, and splits that get no k",
  ignore: GL,
}, async () => {
  const gpu = await acquireGpu();
  try {
    const failures: string[] = [];
    let seed = 2000;
    const cases: Case[] = [
      // The weight gradient's form (dW += xᵀ·dy, db += Σ dy) with k = tokens.
      { ...PLAIN, m: 3, n: 5, k: 1031, transA: true, accumulate: true, colSum: true },
      { ...PLAIN, m: 8, n: 12, k: 1200, transA: true, accumulate: true, colSum: true },
      { ...FULL_COMBOS[5], m: 5, n: 7, k: 1025 },
      // 7 splits of 3 k-tiles: the last splits are empty and must still write zeros.
      { ...FULL_COMBOS[0], m: 9, n: 4, k: 40 },
    ];
    for (const variant of ["tile64s7", "tile128s16", "tile128x64s5"]) {
      for (const cs of cases) {
        const f = await check(gpu, variant, cs, seed++);
        if (f) failures.push(f);
      }
    }
    deepEqual(failures, []);
  } finally {
    gpu.destroy();
  }
});

Deno.test({
  name: "split-K gives the same bits twice and the unsplit result within tolerance",
  ignore: GL,
}, async () => {
  const gpu = await acquireGpu();
  try {
    for (
      const cs of [
        { ...FULL_COMBOS[2], m: 70, n: 20, k: 1100 },
        { ...PLAIN, m: 33, n: 65, k: 1300, transA: true, accumulate: true, colSum: true },
      ]
    ) {
      const x = inputs(cs, 77);
      const first = await run(gpu, "tile64s6", cs, x);
      const again = await run(gpu, "tile64s6", cs, x);
      for (const key of ["c", "pre", "colSum"] as const) {
        deepEqual(new Uint32Array(again[key].buffer), new Uint32Array(first[key].buffer), key);
      }
      const unsplit = await run(gpu, "tile64", cs, x);
      equal(mismatch(first, unsplit, reference(x, cs, true), "split vs unsplit"), null);
    }
  } finally {
    gpu.destroy();
  }
});

Deno.test("GPU matmul default picks tiles by output size and splits k for small outputs", () => {
  const gpuAdapter = {
    isCpu: false,
    device: { limits: { maxComputeWorkgroupStorageSize: 49152 } },
  };
  equal(defaultVariant(gpuAdapter, { m: 4096, n: 4096, k: 4096 }), "tile128");
  equal(gpuDefaultVariant({ m: 1024, n: 3072, k: 768 }), "tile128x64");
  equal(gpuDefaultVariant({ m: 4096, n: 768, k: 768 }), "tile128x64");
  equal(gpuDefaultVariant({ m: 2048, n: 768, k: 64 }), "tile64");
  // The weight gradients that left an H200 idle: 64 tiles of 64x64, so 9 splits of k.
  equal(gpuDefaultVariant({ m: 256, n: 1024, k: 4096 }), "tile64s9");
  equal(gpuDefaultVariant({ m: 64, n: 64, k: 4096 }), "tile64s16");
  // Too little k to split.
  equal(gpuDefaultVariant({ m: 64, n: 64, k: 300 }), "tile64");
  // A device whose workgroup storage holds only the old kernel gets it.
  const small = { isCpu: false, device: { limits: { maxComputeWorkgroupStorageSize: 16384 } } };
  equal(defaultVariant(small, { m: 4096, n: 4096, k: 4096 }), "tiled");
  // CPU adapters keep their choice.
  equal(defaultVariant({ isCpu: true }, { m: 4096, n: 64, k: 4096 }), "reg32x8v");
  equal(defaultVariant({ isCpu: true }, { m: 256, n: 1024, k: 4096 }), "reg32x16v");
});

Deno.test({
  name: "matmul on a GPU-class adapter runs the per-shape default, split-K included",
  ignore: GL,
}, async () => {
  // Kernels for GPUs on llvmpipe: the default then comes from gpuDefaultVariant.
  const gpu = await acquireGpu({ adapterClass: "gpu" });
  try {
    const cases: [Case, string][] = [
      [{ ...MODEL_COMBOS[2], m: 96, n: 160, k: 40 }, "tile64"],
      [{ ...MODEL_COMBOS[7], m: 24, n: 40, k: 1024 }, "tile64s4"],
    ];
    for (const [cs, variant] of cases) {
      equal(defaultVariant(gpu, cs), variant);
      const x = inputs(cs, 500);
      const got = await run(gpu, undefined, cs, x);
      equal(got.label.startsWith(`matmul_${variant}_`), true, got.label);
      equal(mismatch(got, reference(x, cs), reference(x, cs, true), variant), null);
    }
  } finally {
    gpu.destroy();
  }
});

Deno.test("GPU matmul variants reject bad names and split counts", async () => {
  const gpu = await acquireGpu();
  try {
    const buf = gpu.storage(16);
    const ref = { buffer: buf, length: 16 };
    const shape = { m: 2, n: 2, k: 2 };
    throws(() => matmul(gpu, { a: ref, b: ref, c: ref }, { ...shape, variant: "tile96" }), {
      name: "TypeError",
      message: /Unknown matmul variant: tile96/,
    });
    throws(() => matmul(gpu, { a: ref, b: ref, c: ref }, { ...shape, variant: "tile64s0" }), {
      name: "RangeError",
      message: /need 1 <= splits <= 64/,
    });
    throws(() => matmul(gpu, { a: ref, b: ref, c: ref }, { ...shape, variant: "tile64s65" }), {
      name: "RangeError",
    });
    buf.destroy();
  } finally {
    gpu.destroy();
  }
});
