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

      await t.step("dequantize accumulate and nesterovStep within 2 ulp", async () => {
        const n = 5000;
        const x = randomF32(n, 7);
        const { words, scales: nb } = quantizedSize(n);
        const q = new Uint32Array(words);
        const scales = new Float32Array(nb);
        quantizeInt8Ref({ x, q, scales }, { n });
        const base = randomF32(n, 8);
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
        const out = base.slice();
        dequantizeInt8Ref({ q, scales, out }, { n, accumulate: true });
        nesterovStepRef({ theta, momentum: mom, delta }, shape);
        const ulps = {
          dequantizeAccumulate: maxUlps(await gpu.read(gout.buffer, n), out),
          momentum: maxUlps(await gpu.read(gm.buffer, n), mom),
          theta: maxUlps(await gpu.read(gt.buffer, n), theta),
        };
        console.log(`max ulps GPU vs TS twin on ${gpu.adapter.description}:`, ulps);
        for (const [k, u] of Object.entries(ulps)) assert.ok(u <= 2, `${k}: ${u} ulps`);
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
