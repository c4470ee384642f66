import assert from "@std/assert";
import { acquireGpu, type Gpu } from "./device.ts";
import { adamw, adamwChunks, gradNorm, NORM_SEGMENT } from "./adamw.ts";
import { adamwRef, gradNormRef } from "./reference.ts";
import { assertClose, noGpuErrors, randomF32, sameBits } from "./_testing.ts";

async function normCase(gpu: Gpu, n: number, seed: number) {
  const grads = randomF32(n, seed, -0.1, 0.1);
  const g = { buffer: gpu.storage(grads), length: n };
  const out = { buffer: gpu.storage(1), length: 1 };
  const ds = gradNorm(gpu, { grads: g, out }, { n });
  const got: Float32Array[] = [];
  for (let k = 0; k < 2; k++) {
    gpu.write(out.buffer, new Float32Array([k + 5]));
    gpu.run(ds);
    got.push(await gpu.read(out.buffer, 1));
  }
  const expected = new Float64Array(1);
  gradNormRef({ grads, out: expected }, { n });
  // f32 partial sums vs one f64 sum: 1e-5 relative.
  assertClose(got[0], expected, { rtol: 1e-5, atol: 0, label: `gradNorm n=${n}` });
  assert.ok(sameBits(got[0], got[1]), "gradNorm is deterministic");
}

async function adamCase(
  gpu: Gpu,
  opts: {
    total: number;
    offset: number;
    n: number;
    maxNorm: number;
    uniform: boolean;
    decayEnd?: number;
  },
) {
  const { total, offset, n, maxNorm } = opts;
  const params = randomF32(total, 1);
  const grads = randomF32(total, 2, -0.5, 0.5);
  const m = randomF32(total, 3, -0.1, 0.1);
  const v = randomF32(total, 4, 0, 0.01);
  const hyper = new Float32Array([1e-2, 0.9, 0.95, 1e-8, 3, maxNorm]);
  const r = (data: Float32Array) => ({ buffer: gpu.storage(data), length: data.length });
  const g = { params: r(params), grads: r(grads), m: r(m), v: r(v) };
  const norm = { buffer: gpu.storage(1), length: 1 };
  const hyperRef = opts.uniform
    ? { buffer: gpu.uniform(hyper), length: 6 }
    : { buffer: gpu.storage(hyper), length: 6 };
  gpu.run([
    ...gradNorm(gpu, { grads: g.grads, out: norm }, { n: total }),
    adamw(gpu, { ...g, norm, hyper: hyperRef }, {
      n,
      offset,
      weightDecay: 0.1,
      decayEnd: opts.decayEnd,
    }),
  ]);
  const normV = await gpu.read(norm.buffer, 1);
  const e = { params: params.slice(), m: m.slice(), v: v.slice() };
  // Decay on offset..decayEnd, none after it.
  const de = Math.min(Math.max(opts.decayEnd ?? offset + n, offset), offset + n);
  adamwRef({ ...e, grads, norm: normV, hyper }, { n: de - offset, offset, weightDecay: 0.1 });
  adamwRef({ ...e, grads, norm: normV, hyper }, { n: offset + n - de, offset: de, weightDecay: 0 });
  // f32 pow/sqrt/div on the GPU vs f64: 1e-5 relative plus a small absolute term.
  const tol = { rtol: 1e-5, atol: 1e-6 };
  assertClose(await gpu.read(g.params.buffer, total), e.params, { ...tol, label: "params" });
  assertClose(await gpu.read(g.m.buffer, total), e.m, { ...tol, label: "m" });
  assertClose(await gpu.read(g.v.buffer, total), e.v, { ...tol, label: "v" });
  // Outside offset..offset+n nothing moves.
  const p = await gpu.read(g.params.buffer, total);
  assert.ok(sameBits(p.subarray(0, offset), params.subarray(0, offset)));
  assert.ok(sameBits(p.subarray(offset + n), params.subarray(offset + n)));
  return { clipped: maxNorm > 0 && normV[0] > maxNorm };
}

Deno.test("gradNorm and adamw match the reference", async (t) => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      // Sizes that are multiples of 4 take the vec4 loads.
      for (const n of [7, 4099, 1_000_003, 4096, 1_000_000]) {
        await t.step(`gradNorm n=${n}, twice bitwise equal`, () => normCase(gpu, n, n));
      }
      await t.step("adamw with clipping active, offset 37, storage hyper", async () => {
        const { clipped } = await adamCase(gpu, {
          total: 1000,
          offset: 37,
          n: 900,
          maxNorm: 1,
          uniform: false,
        });
        assert.ok(clipped, "the test norm exceeds maxGradNorm");
      });
      await t.step("adamw on a 4-aligned range (vec4), clipping active", async () => {
        const { clipped } = await adamCase(gpu, {
          total: 1000,
          offset: 36,
          n: 900,
          maxNorm: 1,
          uniform: true,
        });
        assert.ok(clipped, "the test norm exceeds maxGradNorm");
      });
      await t.step("adamw with weight decay before decayEnd only (vec4 and scalar)", async () => {
        for (const [offset, n, decayEnd] of [[0, 1000, 514], [1, 999, 37]]) {
          await adamCase(gpu, { total: 1000, offset, n, maxNorm: 1, uniform: true, decayEnd });
        }
      });
      await t.step("adamw without clipping, uniform hyper, odd n", async () => {
        await adamCase(gpu, { total: 13, offset: 0, n: 13, maxNorm: 0, uniform: true });
      });
      await t.step("bad shapes are refused with the name", () => {
        const x = { buffer: gpu.storage(8), length: 8 };
        assert.throws(
          () =>
            adamw(gpu, { params: x, grads: x, m: x, v: x, norm: x, hyper: x }, {
              n: 8,
              offset: 1,
              weightDecay: 0,
            }),
          /adamw: params holds 8 elements, needs 9/,
        );
      });
    });
  } finally {
    gpu.destroy();
  }
});

/** Runs gradNorm then AdamW over a whole vector, cut into `chunk`-float bindings or not. */
async function wholeVectorStep(gpu: Gpu, n: number, decayEnd: number, chunk?: number) {
  const r = (data: Float32Array) => ({ buffer: gpu.storage(data), length: data.length });
  const g = {
    params: r(randomF32(n, 1)),
    grads: r(randomF32(n, 2, -0.5, 0.5)),
    m: r(randomF32(n, 3, -0.1, 0.1)),
    v: r(randomF32(n, 4, 0, 0.01)),
  };
  const norm = { buffer: gpu.storage(1), length: 1 };
  const hyper = { buffer: gpu.storage(new Float32Array([1e-2, 0.9, 0.95, 1e-8, 3, 1])), length: 6 };
  const ds = [
    ...gradNorm(gpu, { grads: g.grads, out: norm }, { n, chunk }),
    ...adamwChunks(gpu, { ...g, norm, hyper }, { n, weightDecay: 0.1, decayEnd, chunk }),
  ];
  gpu.run(ds);
  const out = {
    dispatches: ds.length,
    norm: await gpu.read(norm.buffer, 1),
    params: await gpu.read(g.params.buffer, n),
    m: await gpu.read(g.m.buffer, n),
    v: await gpu.read(g.v.buffer, n),
  };
  for (const b of [g.params, g.grads, g.m, g.v, norm, hyper]) b.buffer.destroy();
  return out;
}

Deno.test("gradNorm and AdamW cut into bindings give the bits of the whole-vector dispatch", async () => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      // Vec4 and scalar access; chunks of 1 and 3 segments, the last one partial; the decay
      // boundary inside a chunk.
      for (
        const [n, chunk] of [[5 * NORM_SEGMENT + 4100, NORM_SEGMENT], [200_003, 3 * NORM_SEGMENT]]
      ) {
        const decayEnd = 2 * NORM_SEGMENT + 999;
        const whole = await wholeVectorStep(gpu, n, decayEnd);
        const cut = await wholeVectorStep(gpu, n, decayEnd, chunk);
        assert.ok(cut.dispatches > whole.dispatches + 2, `n=${n}: cut into several dispatches`);
        assert.ok(
          sameBits(cut.norm, whole.norm),
          `n=${n}: norm ${cut.norm[0]} vs ${whole.norm[0]}`,
        );
        for (const k of ["params", "m", "v"] as const) {
          assert.ok(sameBits(cut[k], whole[k]), `n=${n}: ${k} bitwise equal`);
        }
        const expected = new Float64Array(1);
        gradNormRef({ grads: randomF32(n, 2, -0.5, 0.5), out: expected }, { n });
        assertClose(cut.norm, expected, { rtol: 1e-5, atol: 0, label: `norm n=${n}` });
      }
      const x = { buffer: gpu.storage(8), length: 8 };
      assert.throws(
        () => gradNorm(gpu, { grads: x, out: x }, { n: 8, chunk: 1000 }),
        /gradNorm: chunk must be a positive multiple of 16384, got 1000/,
      );
    });
  } finally {
    gpu.destroy();
  }
});
