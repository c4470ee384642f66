/**
 * Helpers for the kernel tests: a seeded generator, a tolerance check that
 * names the worst element, and a device and models to test on.
 *
 * @module
 */
import { acquireGpu, type Gpu } from "./device.ts";
import type { GptConfig } from "./config.ts";
import { createModel } from "./model.ts";
import type { ModelOptions } from "./model_options.ts";

/** A seeded generator of floats in [lo, hi) (mulberry32). */
export function rng(seed: number): (lo?: number, hi?: number) => number {
  let s = seed >>> 0;
  return (lo = -1, hi = 1) => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const u = ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    return lo + (hi - lo) * u;
  };
}

/** A Float32Array of `n` seeded values in [lo, hi). */
export function randomF32(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const r = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = r(lo, hi);
  return out;
}

/** A Uint32Array of `n` seeded integers in [0, max). */
export function randomU32(n: number, seed: number, max: number): Uint32Array {
  const r = rng(seed);
  const out = new Uint32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.min(max - 1, Math.floor(r(0, max)));
  return out;
}

/**
 * Throws unless |actual - expected| <= atol + rtol * |expected| everywhere
 * (NaN must match NaN), naming the worst element.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: { rtol: number; atol: number; label: string; n?: number },
): void {
  const n = tol.n ?? expected.length;
  if (actual.length < n) {
    throw new Error(`${tol.label}: got ${actual.length} elements, expected ${n}`);
  }
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < n; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Number.isNaN(e) || Number.isNaN(a)) {
      if (Number.isNaN(e) !== Number.isNaN(a)) {
        throw new Error(`${tol.label}: element ${i} is ${a}, expected ${e}`);
      }
      continue;
    }
    const excess = Math.abs(a - e) - (tol.atol + tol.rtol * Math.abs(e));
    if (excess > worstExcess) {
      worstExcess = excess;
      worst = i;
    }
  }
  if (worst >= 0) {
    throw new Error(
      `${tol.label}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} ` +
        `(rtol ${tol.rtol}, atol ${tol.atol})`,
    );
  }
}

/** True when the two arrays hold the same bits. */
export function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < ua.length; i++) if (ua[i] !== ub[i]) return false;
  return true;
}

/** Central difference of `loss` with respect to x[i] (x is restored). */
export function centralDiff(loss: () => number, x: Float64Array, i: number, eps = 1e-6): number {
  const keep = x[i];
  x[i] = keep + eps;
  const up = loss();
  x[i] = keep - eps;
  const down = loss();
  x[i] = keep;
  return (up - down) / (2 * eps);
}

/** sum(a .* b) in f64. */
export function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** A Float64Array of `n` seeded values in [lo, hi). */
export function randomF64(n: number, seed: number, lo = -1, hi = 1): Float64Array {
  return Float64Array.from(randomF32(n, seed, lo, hi));
}

/**
 * Runs `fn` inside validation and out-of-memory error scopes and throws the
 * first error WebGPU reports (shader compilation, binding, dispatch), which
 * would otherwise only void the submit silently.
 */
export async function noGpuErrors<T>(device: GPUDevice, fn: () => Promise<T> | T): Promise<T> {
  device.pushErrorScope("out-of-memory");
  device.pushErrorScope("validation");
  let result: T | undefined;
  let failure: unknown;
  let failed = false;
  try {
    result = await fn();
  } catch (e) {
    failure = e;
    failed = true;
  }
  const validation = await device.popErrorScope();
  const oom = await device.popErrorScope();
  const err = validation ?? oom;
  if (err) throw new Error(`WebGPU error: ${err.message}`, { cause: failure });
  if (failed) throw failure;
  return result as T;
}

/** Runs `fn` on a fresh device of `adapterClass` (default: the adapter's), destroyed after. */
export async function withGpu(
  fn: (gpu: Gpu) => Promise<void>,
  adapterClass?: "cpu" | "gpu",
): Promise<void> {
  const gpu = await acquireGpu({ adapterClass });
  try {
    await fn(gpu);
  } finally {
    gpu.destroy();
  }
}

/**
 * A model whose parameters are GPT-2 init from `seed` plus uniform noise in
 * ±0.1 (LayerNorm weights not 1, biases not 0), and those parameters.
 */
export async function perturbed(
  gpu: Gpu,
  config: GptConfig,
  options: ModelOptions & { batch: number; seed: number },
) {
  const model = await createModel(gpu, config, options);
  const p = await model.getParams();
  const r = rng(options.seed + 100);
  for (const v of model.layout.views) {
    for (let i = v.offset; i < v.offset + v.length; i++) p[i] += r(-0.1, 0.1);
  }
  model.setParams(p);
  return { model, params: p };
}

/** {@linkcode assertClose} on every parameter tensor of a flat gradient, each named in the error. */
export function assertGradsClose(
  views: readonly { name: string; offset: number; length: number }[],
  actual: Float32Array,
  expected: Float64Array,
  tol: { rtol: number; atol: number },
): void {
  for (const v of views) {
    assertClose(
      actual.subarray(v.offset, v.offset + v.length),
      expected.subarray(v.offset, v.offset + v.length),
      { ...tol, label: `grad ${v.name}` },
    );
  }
}
