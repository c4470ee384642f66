import assert from "@std/assert";
import { acquireGpu } from "./device.ts";
import {
  dequantizeInt8,
  nesterovStep,
  outerDispatches,
  pseudoGradient,
  quantizeInt8,
} from "./outer.ts";
import { CHUNK_ALIGN } from "./limits.ts";
import {
  dequantizeInt8Ref,
  nesterovStepRef,
  pseudoGradientRef,
  quantizedSize,
  quantizeInt8Ref,
} from "./reference.ts";
import { noGpuErrors, randomF32, sameBits } from "./_testing.ts";
import { fmaF32, ulpF32 } from "./_fma.ts";

/** Largest distance in ulps between two f32 arrays (NaN must match NaN). */
function maxUlps(a: Float32Array, b: Float32Array): number {
  const ia = new Int32Array(a.buffer, a.byteOffset, a.length);
  const ib = new Int32Array(b.buffer, b.byteOffset, b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    if (Number.isNaN(a[i]) || Number.isNaN(b[i])) {
      if (Number.isNaN(a[i]) !== Number.isNaN(b[i])) return Infinity;
      continue;
    }
    const ka = ia[i] < 0 ? 0x80000000 - ia[i] : ia[i];
    const kb = ib[i] < 0 ? 0x80000000 - ib[i] : ib[i];
    worst = Math.max(worst, Math.abs(ka - kb));
  }
  return worst;
}

/** Unit roundoff of f32 round-to-nearest. */
const U = 2 ** -24;
/** Absolute error floor of one f32 rounding: half the smallest subnormal. */
const ETA = 2 ** -150;
/** Widened (1 + U): also covers the f64 evaluation of the exact values (2^-53 relative per op). */
const GROW = 1 + 2 ** -20;

/** The int8 code of element i. */
function qOf(q: Uint32Array, i: number): number {
  const byte = (q[i >> 2] >>> (8 * (i & 3))) & 0xff;
  return byte >= 128 ? byte - 256 : byte;
}

/**
 * Error bound of r = a·b̃ + c evaluated in f32, fused (one rounding) or not
 * (two), against the exact R = a·b + c, where b̃ carries an earlier error
 * with |a|·|b̃ - b| <= carried:
 *   separate: fl(fl(a·b̃) + c) = (a·b̃(1 + e1) + c)(1 + e2), |e1|, |e2| <= U (plus ETA each
 *             where the result is subnormal), so
 *             |r - R| <= carried + U·|a·b̃| + U·|a·b̃ + c| + U²·|a·b̃| + 2·ETA;
 *   fused:    fl(a·b̃ + c), |r - R| <= carried + U·|a·b̃ + c| + ETA, inside the former.
 * With |a·b̃| <= |ab| + carried and |a·b̃ + c| <= |R| + carried this is
 *   carried + U·GROW·(|ab| + |R| + 2·carried) + 2·ETA.
 * The bound is relative to the terms, not the result: when c cancels a·b it
 * is many ulps of a tiny R, as it must be (fl(a·b)'s rounding survives whole).
 */
function maddErr(ab: number, r: number, carried: number): number {
  return carried + U * GROW * (Math.abs(ab) + Math.abs(r) + 2 * carried) + 2 * ETA;
}

interface Bound {
  /** The exact (f64) value of each element. */
  exact: Float64Array;
  /** Its error bound. */
  err: Float64Array;
}

/**
 * Per-element bounds for the outer kernels evaluated in f32 with any
 * multiply-add fused or not: dequantize-accumulate o + q·s (one madd),
 * momentum m = mu·mom + d, x = d + mu·m (m's error carried), theta' =
 * theta - lr·x (x's error carried). Each result then lies within err of the
 * exact value, so any two evaluations lie within 2·err of each other.
 */
function fmaBounds(
  v: {
    q: Uint32Array;
    scales: Float32Array;
    base: Float32Array;
    theta: Float32Array;
    mom: Float32Array;
    delta: Float32Array;
  },
  shape: { n: number; lr: number; mu: number },
): { out: Bound; mom: Bound; theta: Bound } {
  const { n } = shape;
  const lr = Math.fround(shape.lr), mu = Math.fround(shape.mu);
  const make = (): Bound => ({ exact: new Float64Array(n), err: new Float64Array(n) });
  const out = make(), mom = make(), theta = make();
  for (let i = 0; i < n; i++) {
    const p = qOf(v.q, i) * v.scales[i >> 8];
    out.exact[i] = p + v.base[i];
    out.err[i] = maddErr(p, out.exact[i], 0);
    const M = mu * v.mom[i] + v.delta[i];
    mom.exact[i] = M;
    mom.err[i] = maddErr(mu * v.mom[i], M, 0);
    const X = v.delta[i] + mu * M;
    const errX = maddErr(mu * M, X, Math.abs(mu) * mom.err[i]);
    theta.exact[i] = v.theta[i] - lr * X;
    theta.err[i] = maddErr(lr * X, theta.exact[i], Math.abs(lr) * errX);
  }
  return { out, mom, theta };
}

/**
 * The outer kernels' results with each subset of their multiply-adds fused
 * (dequantize: 1; Nesterov: m, x and theta', 8 subsets), from fmaF32; the
 * last has every one fused.
 */
function fusedVariants(
  v: Parameters<typeof fmaBounds>[0],
  shape: { n: number; lr: number; mu: number },
) {
  const { n } = shape;
  const fr = Math.fround;
  const lr = fr(shape.lr), mu = fr(shape.mu);
  const madd = (fuse: boolean, a: number, b: number, c: number) =>
    fuse ? fmaF32(a, b, c) : fr(fr(a * b) + c);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = fmaF32(qOf(v.q, i), v.scales[i >> 8], v.base[i]);
  return Array.from({ length: 8 }, (_, k) => {
    const m = new Float32Array(n), th = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      m[i] = madd((k & 1) !== 0, mu, v.mom[i], v.delta[i]);
      const x = madd((k & 2) !== 0, mu, m[i], v.delta[i]);
      th[i] = madd((k & 4) !== 0, -lr, x, v.theta[i]);
    }
    return { name: `fused subset ${k}`, out, mom: m, theta: th };
  });
}

/** Asserts |got - exact| <= err element by element, naming the worst. */
function assertWithin(what: string, got: Float32Array, b: Bound): void {
  for (let i = 0; i < got.length; i++) {
    const d = Math.abs(got[i] - b.exact[i]);
    if (!(d <= b.err[i])) {
      throw new assert.AssertionError({
        message: `${what}: element ${i} is ${got[i]}, exact ${b.exact[i]}, off by ${d} > ${
          b.err[i]
        } (${d / ulpF32(b.exact[i])} ulps)`,
      });
    }
  }
}

/** Values that stress the rounding: exact halves, ties, zeros, denormals. */
function hardValues(n: number, seed: number): Float32Array {
  const x = randomF32(n, seed, -3, 3);
  for (let i = 0; i < n; i += 7) x[i] = 0;
  if (n > 300) {
    // Block 1: absmax 127 so scale is ~1 and k + 0.5 values sit on ties.
    for (let i = 256; i < 300; i++) x[i] = ((i % 40) - 20) + 0.5;
    x[256] = 127;
    x[257] = -127;
  }
  if (n > 600) {
    x[512] = 1e-39; // denormal
    x[513] = -3e-38;
  }
  return x;
}

Deno.test("outer-loop kernels match their TypeScript twins", async (t) => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      await t.step("pseudoGradient is bit-exact", async () => {
        const n = 1001;
        const g = randomF32(n, 1);
        const l = randomF32(n, 2);
        const r = (d: Float32Array | number) => ({ buffer: gpu.storage(d), length: n });
        const out = r(n);
        gpu.run([pseudoGradient(gpu, { global: r(g), local: r(l), out }, { n })]);
        const e = new Float32Array(n);
        pseudoGradientRef({ global: g, local: l, out: e }, { n });
        assert.ok(sameBits(await gpu.read(out.buffer, n), e));
      });

      for (const [n, block] of [[1030, 256], [13, 8], [70_001, 64]]) {
        await t.step(`quantize/dequantize bit-exact, n=${n}, block=${block}`, async () => {
          const x = hardValues(n, n);
          const { words, scales: nb } = quantizedSize(n, block);
          const gx = { buffer: gpu.storage(x), length: n };
          const gq = { buffer: gpu.storage(words), length: words };
          const gs = { buffer: gpu.storage(nb), length: nb };
          const gout = { buffer: gpu.storage(n), length: n };
          gpu.run([
            quantizeInt8(gpu, { x: gx, q: gq, scales: gs }, { n, block }),
            dequantizeInt8(gpu, { q: gq, scales: gs, out: gout }, { n, block }),
          ]);
          const q = new Uint32Array(words);
          const scales = new Float32Array(nb);
          quantizeInt8Ref({ x, q, scales }, { n, block });
          const gotQ = new Uint32Array((await gpu.readBytes(gq.buffer, words * 4)).buffer);
          assert.deepEqual(gotQ, q, "q words");
          assert.ok(sameBits(await gpu.read(gs.buffer, nb), scales), "scales");
          const out = new Float32Array(n);
          dequantizeInt8Ref({ q, scales, out }, { n, block });
          assert.ok(sameBits(await gpu.read(gout.buffer, n), out), "dequantized");
          // Round trip error is at most half a step of each block's scale.
          for (let i = 0; i < n; i++) {
            const s = scales[Math.floor(i / block)];
            assert.ok(Math.abs(out[i] - x[i]) <= s / 2 + 1e-30, `element ${i}`);
          }
        });
      }

      await t.step("quantize: known values, ties away from zero, little-endian packing", () => {
        const x = new Float32Array([127, -0.5, 0.5, 1.5, -2.5, 0, 3, -127]);
        const q = new Uint32Array(2);
        const scales = new Float32Array(1);
        quantizeInt8Ref({ x, q, scales }, { n: 8, block: 8 });
        assert.equal(scales[0], 1, "scale is exactly 1, so the .5 values are true ties");
        const bytes = new Int8Array(q.buffer);
        assert.deepEqual(Array.from(bytes), [127, -1, 1, 2, -3, 0, 3, -127]);
      });

      await t.step("quantize: zero, tiny and non-finite blocks", async () => {
        const n = 12;
        const x = new Float32Array([0, 0, 0, 0, 1e-31, -1e-32, 0, 0, 1, NaN, 2, 3]);
        const gq = { buffer: gpu.storage(3), length: 3 };
        const gs = { buffer: gpu.storage(3), length: 3 };
        gpu.run([
          quantizeInt8(gpu, { x: { buffer: gpu.storage(x), length: n }, q: gq, scales: gs }, {
            n,
            block: 4,
          }),
        ]);
        const s = await gpu.read(gs.buffer, 3);
        assert.deepEqual(Array.from(s.subarray(0, 2)), [0, 0]);
        assert.ok(Number.isNaN(s[2]));
        assert.deepEqual(
          Array.from(new Uint32Array((await gpu.readBytes(gq.buffer, 12)).buffer)),
          [0, 0, 0],
        );
        const q = new Uint32Array(3);
        const scales = new Float32Array(3);
        quantizeInt8Ref({ x, q, scales }, { n, block: 4 });
        assert.deepEqual(Array.from(q), [0, 0, 0]);
        assert.ok(Number.isNaN(scales[2]) && scales[0] === 0 && scales[1] === 0);
      });

      await t.step(
        "dequantize accumulate and nesterovStep: exact on CPUs, FMA-bounded on GPUs",
        async () => {
          const n = 5000;
          const x = randomF32(n, 7);
          const { words, scales: nb } = quantizedSize(n);
          const q = new Uint32Array(words);
          const scales = new Float32Array(nb);
          quantizeInt8Ref({ x, q, scales }, { n });
          const base = randomF32(n, 8);
          // Cancellation on purpose: o ≈ -q·s in some elements, where a fused result differs from
          // the separate one by many ulps of the (tiny) result but not of the terms.
          for (let i = 0; i < n; i += 5) {
            base[i] = -Math.fround(qOf(q, i) * scales[i >> 8]) * 1.0001;
          }
          const gout = { buffer: gpu.storage(base), length: n };
          const theta = randomF32(n, 9);
          const mom = randomF32(n, 10, -0.1, 0.1);
          const delta = randomF32(n, 11, -0.01, 0.01);
          const gt = { buffer: gpu.storage(theta), length: n };
          const gm = { buffer: gpu.storage(mom), length: n };
          const shape = { n, lr: 0.7, mu: 0.9 };
          gpu.run([
            dequantizeInt8(gpu, {
              q: { buffer: gpu.storage(q), length: words },
              scales: { buffer: gpu.storage(scales), length: nb },
              out: gout,
            }, { n, accumulate: true }),
            nesterovStep(gpu, {
              theta: gt,
              momentum: gm,
              delta: { buffer: gpu.storage(delta), length: n },
            }, shape),
          ]);
          const got = {
            out: await gpu.read(gout.buffer, n),
            mom: await gpu.read(gm.buffer, n),
            theta: await gpu.read(gt.buffer, n),
          };
          const out = base.slice();
          dequantizeInt8Ref({ q, scales, out }, { n, accumulate: true });
          const twinMom = mom.slice();
          const twinTheta = theta.slice();
          nesterovStepRef({ theta: twinTheta, momentum: twinMom, delta }, shape);
          const ulps = {
            dequantizeAccumulate: maxUlps(got.out, out),
            momentum: maxUlps(got.mom, twinMom),
            theta: maxUlps(got.theta, twinTheta),
          };
          console.log(`max ulps GPU vs TS twin on ${gpu.adapter.description}:`, ulps);
          if (gpu.isCpu) {
            // llvmpipe does not contract: the twins' rounding, to the bit in practice.
            for (const [k, u] of Object.entries(ulps)) assert.ok(u <= 2, `${k}: ${u} ulps`);
          }
          // Every adapter, and the twin, and the results with any of the multiply-adds fused:
          // within the bound of any f32 evaluation of the same expression (see fmaBounds).
          const bounds = fmaBounds({ q, scales, base, theta, mom, delta }, shape);
          const fused = fusedVariants({ q, scales, base, theta, mom, delta }, shape);
          const candidates: [string, Float32Array, Float32Array, Float32Array][] = [
            ["adapter", got.out, got.mom, got.theta],
            ["twin", out, twinMom, twinTheta],
            ...fused.map((f): [string, Float32Array, Float32Array, Float32Array] => [
              f.name,
              f.out,
              f.mom,
              f.theta,
            ]),
          ];
          for (const [who, o, m, th] of candidates) {
            assertWithin(`${who} dequantize accumulate`, o, bounds.out);
            assertWithin(`${who} momentum`, m, bounds.mom);
            assertWithin(`${who} theta`, th, bounds.theta);
          }
          // The bound has room for the fused results the H200 gave (2048 ulps of a cancelled
          // dequantized sum, 62 of theta) and no more than a few roundings of the terms.
          const allFused = fused.at(-1)!;
          console.log("max ulps every madd fused vs TS twin:", {
            dequantizeAccumulate: maxUlps(allFused.out, out),
            momentum: maxUlps(allFused.mom, twinMom),
            theta: maxUlps(allFused.theta, twinTheta),
          });
          assert.ok(maxUlps(allFused.out, out) > 100, "the cancelled elements are a real test");
          const off = twinTheta.slice();
          off[17] = Math.fround(bounds.theta.exact[17] + 3 * bounds.theta.err[17]);
          assert.throws(() => assertWithin("theta", off, bounds.theta), /element 17/);
          for (let i = 0; i < n; i++) {
            const terms = Math.abs(qOf(q, i) * scales[i >> 8]) + Math.abs(base[i]);
            assert.ok(bounds.out.err[i] <= 4 * U * terms + 4 * ETA, `bound of element ${i}`);
          }
        },
      );

      await t.step("fmaF32 rounds a·b + c once, the separate form twice", () => {
        const a = 1 + 2 ** -12;
        assert.equal(fmaF32(a, a, -1), 2 ** -11 + 2 ** -24);
        assert.equal(Math.fround(Math.fround(a * a) - 1), 2 ** -11);
        // A tie of the f64 sum resolved by its TwoSum error: 1 + 2^-24 + 2^-80 rounds up in f32.
        assert.equal(fmaF32(2 ** -40, 2 ** -40, 1 + 2 ** -24), 1 + 2 ** -23);
        assert.equal(fmaF32(2 ** -40, -(2 ** -40), 1 + 2 ** -24), 1);
        assert.equal(fmaF32(3, 5, -15), 0);
        assert.equal(ulpF32(1), 2 ** -23);
        assert.equal(ulpF32(0), 2 ** -149);
      });

      await t.step("a block that is not a multiple of 4 is refused", () => {
        const x = { buffer: gpu.storage(8), length: 8 };
        assert.throws(
          () => quantizeInt8(gpu, { x, q: x, scales: x }, { n: 8, block: 6 }),
          /block must be a positive multiple of 4, got 6/,
        );
      });
    });
  } finally {
    gpu.destroy();
  }
});

Deno.test("the outer kernels cut into bindings give the bytes of one whole-vector dispatch", async () => {
  const gpu = await acquireGpu();
  try {
    const n = 3 * CHUNK_ALIGN + 1000;
    const block = 256;
    const global = randomF32(n, 31, -1, 1);
    const local = randomF32(n, 32, -1, 1);
    const run = async (chunk?: number) => {
      const b = {
        global: gpu.storage(global),
        local: gpu.storage(local),
        delta: gpu.storage(n),
        q: gpu.storage(Math.ceil(n / 4)),
        scales: gpu.storage(Math.ceil(n / block)),
      };
      const ds = outerDispatches(gpu, b, { n, block, chunk });
      gpu.run(ds);
      const out = {
        dispatches: ds.length,
        delta: await gpu.read(b.delta, n),
        q: await gpu.readBytes(b.q, n),
        scales: await gpu.read(b.scales, Math.ceil(n / block)),
      };
      for (const x of Object.values(b)) x.destroy();
      return out;
    };
    const whole = await run();
    const cut = await run(CHUNK_ALIGN);
    assert.equal(whole.dispatches, 2);
    assert.equal(cut.dispatches, 8);
    assert.ok(sameBits(cut.delta, whole.delta), "delta bitwise equal");
    assert.deepEqual(cut.q, whole.q);
    assert.ok(sameBits(cut.scales, whole.scales), "scales bitwise equal");
    // And the whole-vector result is the reference's.
    const d = new Float32Array(n);
    for (let i = 0; i < n; i++) d[i] = Math.fround(global[i] - local[i]);
    assert.ok(sameBits(whole.delta, d), "delta is the reference's");
    assert.throws(
      () => outerDispatches(gpu, {} as never, { n, block, chunk: 1000 }),
      /Cannot build the outer kernels: chunk 1000 is not a multiple of 64 blocks of 256/,
    );
  } finally {
    gpu.destroy();
  }
});
