/**
 * GPT-2 parameter init and the seeded random numbers behind it (also the
 * sampler's, kernels/sample.ts): the same seed gives the same parameters, or
 * the same text, on every machine, so a run can be repeated.
 *
 * @module
 */
import type { GptConfig } from "./config.ts";
import { buildLayout, viewOf } from "./layout.ts";

/**
 * A uniform u32 generator from a seed (xoshiro128**, its state expanded from
 * the seed by splitmix32), deterministic across runs and machines.
 *
 * @example
 * ```ts
 * import { u32Rng } from "./init.ts";
 * const a = u32Rng(7), b = u32Rng(7);
 * console.log(a() === b()); // true
 * ```
 */
export function u32Rng(seed: number): () => number {
  let s = seed >>> 0;
  const split = () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
  let a = split(), b = split(), c = split(), d = split();
  return () => {
    const r = Math.imul(((Math.imul(b, 5) << 7) | (Math.imul(b, 5) >>> 25)) >>> 0, 9) >>> 0;
    const t = (b << 9) >>> 0;
    c = (c ^ a) >>> 0;
    d = (d ^ b) >>> 0;
    b = (b ^ c) >>> 0;
    a = (a ^ d) >>> 0;
    c = (c ^ t) >>> 0;
    d = ((d << 11) | (d >>> 21)) >>> 0;
    return r;
  };
}

/** A standard normal generator from a seed ({@linkcode u32Rng} + Box-Muller), deterministic across runs. */
export function normalRng(seed: number): () => number {
  const next = u32Rng(seed);
  let spare: number | undefined;
  return () => {
    if (spare !== undefined) {
      const v = spare;
      spare = undefined;
      return v;
    }
    const u1 = (next() + 1) / 4294967297; // (0, 1)
    const u2 = next() / 4294967296;
    const r = Math.sqrt(-2 * Math.log(u1));
    spare = r * Math.sin(2 * Math.PI * u2);
    return r * Math.cos(2 * Math.PI * u2);
  };
}

/**
 * GPT-2 init in the flat layout: weights and embeddings ~ N(0, 0.02), the two
 * residual projections (attn.c_proj, mlp.c_proj) ~ N(0, 0.02/sqrt(2L)),
 * biases 0, LayerNorm weights 1. Padding is 0.
 *
 * @example
 * ```ts
 * import { initParams } from "./init.ts";
 * const p = initParams({ nLayer: 1, nHead: 1, nEmbd: 8, blockSize: 4, vocabSize: 16 }, 1);
 * console.log(p.length % 64); // 0
 * ```
 */
export function initParams(config: GptConfig, seed = 0): Float32Array {
  const layout = buildLayout(config);
  const params = new Float32Array(layout.totalLength);
  const rand = normalRng(seed);
  const residualStd = 0.02 / Math.sqrt(2 * config.nLayer);
  for (const v of layout.views) {
    const x = viewOf(params, v);
    if (
      v.name.endsWith("ln_1.weight") || v.name.endsWith("ln_2.weight") || v.name === "ln_f.weight"
    ) {
      x.fill(1);
    } else if (v.shape.length >= 2) {
      const std = v.name.endsWith("c_proj.weight") ? residualStd : 0.02;
      for (let i = 0; i < x.length; i++) x[i] = rand() * std;
    }
  }
  return params;
}
