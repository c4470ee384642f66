import assert from "@std/assert";
import { acquireGpu, type Gpu } from "./device.ts";
import { embeddingBackward, embeddingForward } from "./embedding.ts";
import { embeddingBackwardRef, embeddingForwardRef } from "./reference.ts";
import { assertClose, noGpuErrors, randomF32, randomU32, sameBits } from "./_testing.ts";

// The forward is one f32 add: exact. The backward sums in the same order as
// the reference's f32 sums; the tolerance still allows 1e-6 relative.
const TOL = { rtol: 1e-6, atol: 1e-7 };

async function runCase(gpu: Gpu, b: number, t: number, c: number, v: number, seed: number) {
  const tokens = randomU32(b * t, seed, v);
  // Repeat a token so that some rows gather several positions.
  tokens[0] = tokens[b * t - 1];
  const wte = randomF32(v * c, seed + 1);
  const wpe = randomF32(t * c, seed + 2);
  const dout = randomF32(b * t * c, seed + 3);
  const dwte0 = randomF32(v * c, seed + 4);
  const dwpe0 = randomF32(t * c, seed + 5);
  const r = (buffer: GPUBuffer, length: number) => ({ buffer, length });
  const gt = r(gpu.storage(tokens), b * t);
  const gout = r(gpu.storage(b * t * c), b * t * c);
  const gdwte = r(gpu.storage(dwte0), v * c);
  const gdwpe = r(gpu.storage(dwpe0), t * c);
  gpu.run([
    embeddingForward(gpu, {
      tokens: gt,
      wte: r(gpu.storage(wte), v * c),
      wpe: r(gpu.storage(wpe), t * c),
      out: gout,
    }, { b, t, c }),
  ]);
  const bw = embeddingBackward(gpu, {
    tokens: gt,
    dout: r(gpu.storage(dout), b * t * c),
    dwte: gdwte,
    dwpe: gdwpe,
  }, { b, t, c, v });
  gpu.run(bw);
  const out = new Float32Array(b * t * c);
  embeddingForwardRef({ tokens, wte, wpe, out }, { b, t, c });
  const dwte = dwte0.slice();
  const dwpe = dwpe0.slice();
  embeddingBackwardRef({ tokens, dout, dwte, dwpe }, { b, t, c, v });
  assert.ok(sameBits(await gpu.read(gout.buffer, b * t * c), out), "forward is exact");
  assertClose(await gpu.read(gdwte.buffer, v * c), dwte, { ...TOL, label: "dwte" });
  assertClose(await gpu.read(gdwpe.buffer, t * c), dwpe, { ...TOL, label: "dwpe" });
  return { bw, gdwte, gdwpe, n: v * c, m: t * c };
}

Deno.test("embedding forward and backward match the reference", async (t) => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      await t.step("b=3, t=5, c=24, v=13", async () => {
        await runCase(gpu, 3, 5, 24, 13, 1);
      });
      await t.step("b=16, t=64, c=64, v=256, and the scatter-add is deterministic", async () => {
        const { bw, gdwte, gdwpe, n, m } = await runCase(gpu, 16, 64, 64, 256, 2);
        const runs: Float32Array[] = [];
        for (let k = 0; k < 2; k++) {
          gpu.write(gdwte.buffer, new Float32Array(n));
          gpu.write(gdwpe.buffer, new Float32Array(m));
          gpu.run(bw);
          runs.push(
            new Float32Array([
              ...await gpu.read(gdwte.buffer, n),
              ...await gpu.read(gdwpe.buffer, m),
            ]),
          );
        }
        assert.ok(sameBits(runs[0], runs[1]));
      });
      await t.step("a token >= v yields NaN forward and is skipped backward", async () => {
        const [b, t, c, v] = [1, 2, 4, 3];
        const tokens = new Uint32Array([1, 7]);
        const r = (data: Float32Array | Uint32Array) => ({
          buffer: gpu.storage(data),
          length: data.length,
        });
        const out = r(new Float32Array(b * t * c));
        const dwte = r(new Float32Array(v * c));
        gpu.run([
          embeddingForward(gpu, {
            tokens: r(tokens),
            wte: r(new Float32Array(v * c).fill(1)),
            wpe: r(new Float32Array(t * c)),
            out,
          }, { b, t, c }),
          ...embeddingBackward(gpu, {
            tokens: r(tokens),
            dout: r(new Float32Array(b * t * c).fill(2)),
            dwte,
            dwpe: r(new Float32Array(t * c)),
          }, { b, t, c, v }),
        ]);
        const o = await gpu.read(out.buffer, b * t * c);
        assert.deepEqual(Array.from(o.subarray(0, 4)), [1, 1, 1, 1]);
        assert.ok(o.subarray(4).every(Number.isNaN));
        assert.deepEqual(Array.from(await gpu.read(dwte.buffer, v * c)), [
          0,
          0,
          0,
          0,
          2,
          2,
          2,
          2,
          0,
          0,
          0,
          0,
        ]);
      });
    });
  } finally {
    gpu.destroy();
  }
});
