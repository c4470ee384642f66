/**
 * What the GPU matmul tests share: a case (shape, layout, optional buffers,
 * storage), its seeded inputs, and one run on the device that reads back
 * everything the matmul may write.
 *
 * @module
 */
import { randomF32 } from "./_testing.ts";
import type { Gpu, TensorRef } from "./device.ts";
import type { Layout } from "./_matmul_wgsl.ts";
import { fromF16Bits, halfWords, packHalves, roundToF16, toF16Bits, unpackHalves } from "./half.ts";
import { matmul, type MatmulEpilogue, type MatmulStorage } from "./matmul.ts";

/**
 * One fused matmul: the shape, layout and which optional buffers it has (as the shader
 * generators see them), and how it stores its operands.
 */
export interface Case extends Omit<Layout, "f16A" | "f16B" | "f16C"> {
  /** How A is stored (default f32). */
  aType?: MatmulStorage;
  /** How B is stored (default f32). */
  bType?: MatmulStorage;
  /** How C is stored (default f32). */
  cType?: MatmulStorage;
}

/** The inputs of a case; those stored as f16 already hold f16 values. */
export interface Inputs {
  a: Float32Array;
  b: Float32Array;
  c: Float32Array;
  bias: Float32Array;
  res: Float32Array;
  pre: Float32Array;
  colSum: Float32Array;
}

/** What a matmul writes. */
export interface Outputs {
  c: Float32Array;
  pre: Float32Array;
  colSum: Float32Array;
}

/** Seeded inputs of `cs`, A and B (and C) rounded to f16 where the case stores them so. */
export function inputs(cs: Case, seed: number): Inputs {
  const { m, n, k } = cs;
  const as = (type: MatmulStorage | undefined, v: Float32Array) =>
    type === "f16" ? roundToF16(v) : v;
  return {
    a: as(cs.aType, randomF32(m * k, seed)),
    b: as(cs.bType, randomF32(k * n, seed + 1)),
    c: as(cs.cType, randomF32(m * n, seed + 2)),
    bias: randomF32(n, seed + 3),
    res: randomF32(m * n, seed + 4),
    pre: randomF32(m * n, seed + 5, -3, 3),
    colSum: randomF32(n, seed + 6),
  };
}

/** The layout and optional buffers of a case without any: add what a case needs. */
export const PLAIN = {
  transA: false,
  transB: false,
  accumulate: false,
  bias: false,
  residual: false,
  colSum: false,
  epilogue: "none" as MatmulEpilogue,
};

/** Every layout with every optional buffer at once, with each epilogue. */
export const FULL_COMBOS: Omit<Case, "m" | "n" | "k">[] = [
  [false, false],
  [true, false],
  [false, true],
].flatMap(([transA, transB]) =>
  (["gelu", "geluBackward"] as const).map((epilogue) => ({
    transA,
    transB,
    accumulate: true,
    bias: true,
    residual: true,
    colSum: true,
    epilogue,
  }))
);

/**
 * Runs one case on the device (the default variant if none), storing A, B
 * and C as the case says; returns what it wrote, as f32, and the dispatch's label.
 */
export async function run(
  gpu: Gpu,
  variant: string | undefined,
  cs: Case,
  x: Inputs,
): Promise<Outputs & { label: string }> {
  const { m, n, k } = cs;
  const aHalf = cs.aType === "f16", bHalf = cs.bType === "f16", outHalf = cs.cType === "f16";
  const store = (v: Float32Array, half: boolean) =>
    half ? gpu.storage(packHalves(toF16Bits(v))) : gpu.storage(v);
  const bufs = [
    store(x.a, aHalf),
    store(x.b, bHalf),
    store(x.c, outHalf),
    ...[x.bias, x.res, x.pre, x.colSum].map((d) => gpu.storage(d)),
  ];
  try {
    const ref = (i: number, length: number): TensorRef => ({ buffer: bufs[i], length });
    const words = (count: number, half: boolean) => (half ? halfWords(count) : count);
    const d = matmul(gpu, {
      a: ref(0, words(m * k, aHalf)),
      b: ref(1, words(k * n, bHalf)),
      c: ref(2, words(m * n, outHalf)),
      bias: cs.bias ? ref(3, n) : undefined,
      residual: cs.residual ? ref(4, m * n) : undefined,
      pre: cs.epilogue === "none" ? undefined : ref(5, m * n),
      colSum: cs.colSum ? ref(6, n) : undefined,
    }, { ...cs, variant });
    gpu.run([d]);
    // Read back together: they share one ~10 ms mapAsync floor.
    const [c, pre, colSum] = await Promise.all([
      outHalf
        ? gpu.readBytes(bufs[2], words(m * n, true) * 4).then((b) =>
          fromF16Bits(
            unpackHalves(new Uint32Array(b.buffer, b.byteOffset, words(m * n, true)), m * n),
          )
        )
        : gpu.read(bufs[2], m * n),
      gpu.read(bufs[5], m * n),
      gpu.read(bufs[6], n),
    ]);
    return { c, pre, colSum, label: d.label };
  } finally {
    for (const b of bufs) b.destroy();
  }
}
