import { deepEqual, ok, throws } from "@std/assert";
import { acquireGpu, type Gpu } from "./device.ts";
import {
  biasBackward,
  biasBackwardReference,
  matmul,
  type MatmulEpilogue,
  matmulReference,
  matmulVariants,
} from "./matmul.ts";
import { geluBackwardRef, geluForwardRef } from "./reference.ts";

// GPU results must match the f64 reference within 1e-4 relative to the magnitude of the
// sum (sum of |a*b| plus |bias| and |c|), i.e. f32 rounding noise, not a wrong element.
const REL_TOL = 1e-4;

/** Deterministic pseudo-random floats in [-1, 1). */
function random(length: number, seed: number): Float32Array {
  const out = new Float32Array(length);
  let s = seed >>> 0;
  for (let i = 0; i < length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

function abs(x: Float32Array): Float32Array {
  return x.map(Math.abs);
}

interface Case {
  m: number;
  n: number;
  k: number;
  transA: boolean;
  transB: boolean;
  accumulate: boolean;
  bias: boolean;
}

async function runCase(gpu: Gpu, variant: string, cs: Case, seed: number): Promise<string | null> {
  const { m, n, k } = cs;
  const a = random(m * k, seed);
  const b = random(k * n, seed + 1);
  const c0 = random(m * n, seed + 2);
  const bias = cs.bias ? random(n, seed + 3) : undefined;
  const bufA = gpu.storage(a), bufB = gpu.storage(b), bufC = gpu.storage(c0);
  const bufBias = bias ? gpu.storage(bias) : undefined;
  try {
    gpu.run([matmul(gpu, {
      a: { buffer: bufA, length: a.length },
      b: { buffer: bufB, length: b.length },
      c: { buffer: bufC, length: c0.length },
      bias: bufBias ? { buffer: bufBias, length: n } : undefined,
    }, { ...cs, variant })]);
    const got = await gpu.read(bufC, m * n);
    const want = matmulReference({ a, b, c: c0, bias }, cs);
    const scale = matmulReference(
      { a: abs(a), b: abs(b), c: abs(c0), bias: bias ? abs(bias) : undefined },
      cs,
    );
    for (let i = 0; i < m * n; i++) {
      const err = Math.abs(got[i] - want[i]);
      if (!(err <= REL_TOL * scale[i] + 1e-7)) {
        return `${variant} ${JSON.stringify(cs)}: element ${i} (row ${Math.floor(i / n)}, col ${
          i % n
        }) got ${got[i]}, want ${want[i]}`;
      }
    }
    return null;
  } finally {
    bufA.destroy();
    bufB.destroy();
    bufC.destroy();
    bufBias?.destroy();
  }
}

Deno.test("matmul matches the reference for every variant, layout, accumulate and bias", async () => {
  const gpu = await acquireGpu();
  try {
    const shapes = [
      { m: 7, n: 13, k: 5 },
      { m: 1, n: 1, k: 1 },
      { m: 33, n: 17, k: 40 },
      // Every size a multiple of 4: the `v` variants load vec4s from both operands.
      { m: 36, n: 20, k: 12 },
    ];
    // Small and odd block shapes cover every path of the generators (edge guards, vec4 loads
    // along k and along the block, unrolling) on every combination.
    const variants = [
      "naive",
      "reg4x4",
      "tiled",
      "reg3x5",
      "lane5x3w4",
      "reg2x8w2",
      "reg4x4v",
      "reg8x4k3v",
    ];
    const failures: string[] = [];
    let count = 0;
    for (const variant of variants) {
      for (const shape of shapes) {
        for (const [transA, transB] of [[false, false], [true, false], [false, true]]) {
          for (const accumulate of [false, true]) {
            for (const bias of [false, true]) {
              const cs = { ...shape, transA, transB, accumulate, bias };
              const f = await runCase(gpu, variant, cs, 17 + count);
              count++;
              if (f) failures.push(f);
            }
          }
        }
      }
    }
    // The CPU default takes seconds to compile per combination on llvmpipe: each layout once,
    // with and without vec4 loads.
    const dflt = matmulVariants(gpu)[0];
    for (const shape of [shapes[0], shapes[3]]) {
      for (const [transA, transB] of [[false, false], [true, false], [false, true]]) {
        const cs = { ...shape, transA, transB, accumulate: true, bias: true };
        const f = await runCase(gpu, dflt, cs, 17 + count);
        count++;
        if (f) failures.push(f);
      }
    }
    deepEqual(failures.slice(0, 5), []);
    ok(count === variants.length * shapes.length * 12 + 6);
  } finally {
    gpu.destroy();
  }
});

Deno.test("matmul default variant runs the model's forward and backward shapes", async () => {
  const gpu = await acquireGpu();
  try {
    // Shrunk model shapes: x [B*T, C] = [96, 24], W [C, OC] = [24, 40].
    const m = 96, c = 24, oc = 40;
    const cases: Case[] = [
      { m, n: oc, k: c, transA: false, transB: false, accumulate: false, bias: true }, // y = xW+b
      { m, n: c, k: oc, transA: false, transB: true, accumulate: true, bias: false }, // dx += dy Wᵀ
      { m: c, n: oc, k: m, transA: true, transB: false, accumulate: true, bias: false }, // dW += xᵀdy
    ];
    for (const [i, cs] of cases.entries()) {
      deepEqual(await runCase(gpu, matmulVariants(gpu)[0], cs, 100 + i), null);
    }
  } finally {
    gpu.destroy();
  }
});

/** The fused forms, computed from the plain reference and the element-wise references. */
function fusedReference(
  x: { a: Float32Array; b: Float32Array; c: Float32Array; bias: Float32Array; res: Float32Array },
  x2: { pre: Float32Array; colSum: Float32Array },
  cs: Case & { epilogue: MatmulEpilogue },
): { c: Float32Array; pre: Float32Array; colSum: Float32Array } {
  const { m, n, k } = cs;
  const plain = matmulReference({ a: x.a, b: x.b, c: new Float32Array(m * n), bias: x.bias }, {
    ...cs,
    accumulate: false,
  });
  const v = plain.map((y, i) => y + x.res[i]);
  let out = v;
  const pre = x2.pre.slice();
  if (cs.epilogue === "gelu") {
    pre.set(v);
    out = new Float32Array(m * n);
    geluForwardRef({ inp: v, out }, { n: m * n });
  } else if (cs.epilogue === "geluBackward") {
    out = new Float32Array(m * n);
    geluBackwardRef({ dinp: out, inp: x2.pre, dout: v }, { n: m * n });
  }
  const c = cs.accumulate ? out.map((y, i) => y + x.c[i]) : out;
  // op(B)[kk, j] summed over kk.
  const colSum = x2.colSum.slice();
  for (let j = 0; j < n; j++) {
    for (let kk = 0; kk < k; kk++) colSum[j] += cs.transB ? x.b[j * k + kk] : x.b[kk * n + j];
  }
  return { c, pre, colSum };
}

/** Runs one fused case; returns a failure line or null. */
async function runFusedCase(
  gpu: Gpu,
  variant: string,
  cs: Case & { epilogue: MatmulEpilogue },
  seed: number,
): Promise<string | null> {
  const { m, n, k, epilogue } = cs;
  const x = {
    a: random(m * k, seed),
    b: random(k * n, seed + 1),
    c: random(m * n, seed + 2),
    bias: random(n, seed + 3),
    res: random(m * n, seed + 4),
  };
  const x2 = { pre: random(m * n, seed + 5).map((v) => 3 * v), colSum: random(n, seed + 6) };
  const bufs = [x.a, x.b, x.c, x.bias, x.res, x2.pre, x2.colSum].map((d) => gpu.storage(d));
  try {
    const ref = (i: number, length: number) => ({ buffer: bufs[i], length });
    gpu.run([matmul(gpu, {
      a: ref(0, m * k),
      b: ref(1, k * n),
      c: ref(2, m * n),
      bias: ref(3, n),
      residual: ref(4, m * n),
      pre: epilogue === "none" ? undefined : ref(5, m * n),
      colSum: ref(6, n),
    }, { ...cs, variant })]);
    const got = {
      c: await gpu.read(bufs[2], m * n),
      pre: await gpu.read(bufs[5], m * n),
      colSum: await gpu.read(bufs[6], n),
    };
    const want = fusedReference(x, x2, cs);
    for (const key of ["c", "pre", "colSum"] as const) {
      // Inputs are in [-1, 1): sums of k products, so k-scaled f32 noise.
      const tol = 1e-5 * (k + 4);
      const i = got[key].findIndex((g, i) =>
        !(Math.abs(g - want[key][i]) <= tol * (1 + Math.abs(want[key][i])))
      );
      if (i >= 0) {
        return `${variant} ${JSON.stringify(cs)} ${key}[${i}]: got ${got[key][i]}, want ${
          want[key][i]
        }`;
      }
    }
    return null;
  } finally {
    for (const b of bufs) b.destroy();
  }
}

Deno.test("matmul fuses residual, GELU forward and backward epilogues and column sums", async () => {
  const gpu = await acquireGpu();
  try {
    const failures: string[] = [];
    let seed = 300;
    // Every layout and epilogue on variants that compile fast, with odd block shapes and
    // odd sizes for the edge guards.
    for (const variant of ["naive", "tiled", "lane5x3w4", "reg3x5k2", "reg4x4v"]) {
      for (const shape of [{ m: 7, n: 13, k: 5 }, { m: 68, n: 66, k: 36 }]) {
        for (const [transA, transB] of [[false, false], [true, false], [false, true]]) {
          for (const epilogue of ["none", "gelu", "geluBackward"] as const) {
            const accumulate = seed % 2 === 0;
            const cs = { ...shape, transA, transB, accumulate, bias: true, epilogue };
            const f = await runFusedCase(gpu, variant, cs, seed++);
            if (f) failures.push(f);
          }
        }
      }
    }
    // A CPU default (the narrower one compiles faster) on the model's combinations; k = 36
    // takes the vec4-along-k loads.
    for (const variant of ["reg32x8v"]) {
      const cases = [
        { m: 70, n: 136, k: 36, transA: false, transB: false, epilogue: "gelu" },
        { m: 70, n: 66, k: 36, transA: false, transB: true, epilogue: "geluBackward" },
        { m: 40, n: 68, k: 70, transA: true, transB: false, epilogue: "none" },
      ] as const;
      for (const c of cases) {
        const cs = { ...c, accumulate: c.transA, bias: true };
        const f = await runFusedCase(gpu, variant, cs, seed++);
        if (f) failures.push(f);
      }
    }
    deepEqual(failures.slice(0, 5), []);
  } finally {
    gpu.destroy();
  }
});

Deno.test("matmul gives the same bits on repeated runs", async () => {
  const gpu = await acquireGpu();
  try {
    const m = 37, n = 29, k = 91;
    const a = gpu.storage(random(m * k, 5)), b = gpu.storage(random(k * n, 6));
    for (const variant of [matmulVariants(gpu)[0], "naive", "lane5x3w4"]) {
      const outs: Float32Array[] = [];
      for (let run = 0; run < 2; run++) {
        const c = gpu.storage(m * n);
        gpu.run([matmul(gpu, {
          a: { buffer: a, length: m * k },
          b: { buffer: b, length: k * n },
          c: { buffer: c, length: m * n },
        }, { m, n, k, transA: false, transB: true, variant })]);
        outs.push(await gpu.read(c, m * n));
        c.destroy();
      }
      deepEqual(new Uint32Array(outs[0].buffer), new Uint32Array(outs[1].buffer), variant);
    }
    a.destroy();
    b.destroy();
  } finally {
    gpu.destroy();
  }
});

Deno.test("biasBackward accumulates column sums like the reference", async () => {
  const gpu = await acquireGpu();
  try {
    for (const [rows, cols] of [[7, 13], [1, 1], [130, 70]]) {
      const dout = random(rows * cols, rows), prior = random(cols, cols);
      const bd = gpu.storage(dout), bb = gpu.storage(prior);
      const d = biasBackward(gpu, {
        dout: { buffer: bd, length: dout.length },
        dbias: { buffer: bb, length: cols },
      }, { rows, cols });
      gpu.run([d]);
      const got = await gpu.read(bb, cols);
      const want = biasBackwardReference(dout, { rows, cols, dbias: prior });
      for (let j = 0; j < cols; j++) {
        ok(Math.abs(got[j] - want[j]) <= 1e-5 * (rows + 1), `col ${j}: ${got[j]} vs ${want[j]}`);
      }
      bd.destroy();
      bb.destroy();
    }
  } finally {
    gpu.destroy();
  }
});

Deno.test("matmul rejects bad shapes, short buffers and unknown variants", async () => {
  const gpu = await acquireGpu();
  try {
    const buf = gpu.storage(16);
    const ref = { buffer: buf, length: 16 };
    throws(() => matmul(gpu, { a: ref, b: ref, c: ref }, { m: 0, n: 2, k: 2 }), /m must be/);
    throws(() => matmul(gpu, { a: ref, b: ref, c: ref }, { m: 2.5, n: 2, k: 2 }), /m must be/);
    throws(() => matmul(gpu, { a: ref, b: ref, c: ref }, { m: 8, n: 8, k: 8 }), /a holds 16/);
    throws(
      () => matmul(gpu, { a: ref, b: ref, c: ref }, { m: 2, n: 2, k: 2, variant: "fast" }),
      /Unknown matmul variant: fast/,
    );
    throws(
      () => matmul(gpu, { a: ref, b: ref, c: ref }, { m: 2, n: 2, k: 2, epilogue: "gelu" }),
      /pre must be given exactly when an epilogue is/,
    );
    throws(
      () => matmul(gpu, { a: ref, b: ref, c: ref, pre: ref }, { m: 2, n: 2, k: 2 }),
      /pre must be given exactly when an epilogue is \(epilogue none\)/,
    );
    throws(
      () =>
        matmul(gpu, { a: ref, b: ref, c: ref, residual: { buffer: buf, length: 3 } }, {
          m: 2,
          n: 2,
          k: 2,
        }),
      /residual holds 3 < 4/,
    );
    throws(
      () => biasBackward(gpu, { dout: ref, dbias: ref }, { rows: 4, cols: 8 }),
      /dout holds 16 < 32/,
    );
    buf.destroy();
  } finally {
    gpu.destroy();
  }
});
