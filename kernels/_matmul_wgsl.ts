/**
 * WGSL pieces shared by the matmul generators of `matmul.ts` (CPU-shaped
 * variants) and `matmul_gpu.ts` (workgroup-tiled and split-K variants): the
 * layout a shader is generated for, its bindings, and the store that applies
 * bias, residual, epilogue and accumulate to one output.
 *
 * @module
 */
import { GELU_WGSL } from "./gelu.ts";

/** What {@linkcode store} applies to each output before storing it. */
export type MatmulEpilogue = "none" | "gelu" | "geluBackward";

/** Everything a generated matmul shader depends on. */
export interface Layout {
  /** Rows of C. */
  m: number;
  /** Columns of C. */
  n: number;
  /** The contracted dimension. */
  k: number;
  /** A is stored [k,m]. */
  transA: boolean;
  /** B is stored [n,k]. */
  transB: boolean;
  /** C += instead of C =. */
  accumulate: boolean;
  /** A bias [n] is bound. */
  bias: boolean;
  /** A residual [m,n] is bound. */
  residual: boolean;
  /** The epilogue; anything but "none" binds `pre`. */
  epilogue: MatmulEpilogue;
  /** A column-sum output [n] is bound. */
  colSum: boolean;
  /** A is stored as f16 (the products are summed in f32). */
  f16A: boolean;
  /** B is stored as f16. */
  f16B: boolean;
  /** C is stored as f16 (bias, residual, pre and colSum stay f32). */
  f16C: boolean;
}

/** One compute pass of a matmul: its WGSL and workgroup counts. */
export interface Plan {
  /** The WGSL module, entry point `main`. */
  code: string;
  /** Workgroup counts in x, y, z. */
  workgroups: [number, number, number];
}

/** The optional buffers of a layout, in binding order after A, B, C and the sizes. */
export function extras(l: Layout): string[] {
  const names: string[] = [];
  if (l.bias) names.push("bias");
  if (l.residual) names.push("residual");
  if (l.epilogue !== "none") names.push("pre");
  if (l.colSum) names.push("colSum");
  return names;
}

/** `u` literal for WGSL. */
export function u(v: number): string {
  return `${v >>> 0}u`;
}

/** The WGSL element type of a binding: vec4 when bound four at a time, f16 with `half`. */
export function t(vec: boolean, half = false): string {
  const el = half ? "f16" : "f32";
  return vec ? `vec4<${el}>` : el;
}

/** True when any of A, B, C is stored as f16. */
export function usesF16(l: Layout): boolean {
  return l.f16A || l.f16B || l.f16C;
}

/** The directive a module that stores or computes f16 must start with (else nothing). */
export function enableF16(l: Layout): string {
  return usesF16(l) ? "enable f16;\n" : "";
}

/** The sizes uniform: its struct and its binding at `binding`. */
export function dimsBinding(binding: number): string[] {
  return [
    `struct Dims { m: u32, n: u32, k: u32, pad: u32 }`,
    `@group(0) @binding(${binding}) var<uniform> dims: Dims;`,
  ];
}

/**
 * The declarations of the optional buffers, bound from `first` on (with
 * `vecC`, all but colSum as vec4s), and the GELU helpers an epilogue needs.
 */
export function extraBindings(l: Layout, vecC: boolean, first: number): string[] {
  return [
    ...extras(l).map((name, i) => {
      const access = name === "colSum" || (name === "pre" && l.epilogue === "gelu")
        ? "read_write"
        : "read";
      const type = t(vecC && name !== "colSum");
      return `@group(0) @binding(${first + i}) var<storage, ${access}> ${name}: array<${type}>;`;
    }),
    l.epilogue === "none" ? "" : GELU_WGSL,
  ];
}

/**
 * The bindings and helper functions. `vecA`/`vecB`: A or B bound as vec4s;
 * `vecC`: C and the per-output extras (bias, residual, pre) bound as vec4s.
 */
export function header(l: Layout, vecA = false, vecB = false, vecC = false): string {
  return enableF16(l) + [
    `@group(0) @binding(0) var<storage, read> A: array<${t(vecA, l.f16A)}>;`,
    `@group(0) @binding(1) var<storage, read> B: array<${t(vecB, l.f16B)}>;`,
    `@group(0) @binding(2) var<storage, read_write> Cm: array<${t(vecC, l.f16C)}>;`,
    // Sizes live in a uniform so one compiled pipeline serves every shape: llvmpipe takes
    // seconds to compile the large register-blocked kernels.
    ...dimsBinding(3),
    ...extraBindings(l, vecC, 4),
  ].join("\n");
}

/** Reads the sizes from the uniform. */
export const DIMS = "let M = dims.m;\n  let N = dims.n;\n  let K = dims.k;";

/**
 * The WGSL statement that finishes one output: bias, residual, epilogue,
 * accumulate, store. With `vec`, four: `acc` is a vec4 of the outputs at
 * columns col..col+3 (col a multiple of 4, n too) and C and the extras are
 * bound as vec4s, so each load or store moves four. With `f16C`, C is
 * read and written through conversions; the sums stay f32 until the store.
 */
export function store(l: Layout, row: string, col: string, acc: string, vec = false): string {
  const idx = vec ? `(${row} * dims.n + ${col}) / 4u` : `${row} * dims.n + ${col}`;
  let v = acc;
  if (l.bias) v = `${v} + bias[${vec ? `${col} / 4u` : col}]`;
  if (l.residual) v = `${v} + residual[${idx}]`;
  let pre = "";
  if (l.epilogue === "gelu") {
    pre = `let zpre = ${v}; pre[${idx}] = zpre; `;
    v = vec ? "gelu4(zpre)" : "gelu(zpre)";
  } else if (l.epilogue === "geluBackward") {
    v = `(${v}) * ${vec ? "gelu_grad4" : "gelu_grad"}(pre[${idx}])`;
  }
  const old = l.f16C ? `${t(vec)}(Cm[${idx}])` : `Cm[${idx}]`;
  if (l.accumulate) v = `${old} + (${v})`;
  if (l.f16C) v = `${t(vec, true)}(${v})`;
  return pre ? `{ ${pre}Cm[${idx}] = ${v}; }` : `Cm[${idx}] = ${v};`;
}
