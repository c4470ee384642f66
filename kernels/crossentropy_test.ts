import assert from "@std/assert";
import { acquireGpu, type Gpu } from "./device.ts";
import { crossEntropyForwardBackward, meanLoss } from "./crossentropy.ts";
import { crossEntropyForwardBackwardRef, meanLossRef } from "./reference.ts";
import { assertClose, noGpuErrors, randomF32, randomU32, sameBits } from "./_testing.ts";

// f32 exp/log on the GPU vs f64 in the reference.
const TOL = { rtol: 1e-5, atol: 1e-6 };

async function runCase(
  gpu: Gpu,
  rows: number,
  v: number,
  seed: number,
  spread: number,
  scale?: number,
) {
  const logits = randomF32(rows * v, seed, -spread, spread);
  const targets = randomU32(rows, seed + 1, v);
  const r = (data: Float32Array | Uint32Array | number, length: number) => ({
    buffer: gpu.storage(data),
    length,
  });
  const gl = r(logits, rows * v);
  const gt = r(targets, rows);
  const losses = r(rows, rows);
  const dlogits = r(randomF32(rows * v, 9), rows * v);
  const out = r(1, 1);
  gpu.run([
    crossEntropyForwardBackward(gpu, { logits: gl, targets: gt, losses, dlogits }, {
      rows,
      v,
      scale,
    }),
    meanLoss(gpu, { losses, out }, { rows }),
  ]);
  const eLosses = new Float32Array(rows);
  const eD = new Float32Array(rows * v);
  crossEntropyForwardBackwardRef({ logits, targets, losses: eLosses, dlogits: eD }, {
    rows,
    v,
    scale,
  });
  const eMean = new Float32Array(1);
  meanLossRef({ losses: eLosses, out: eMean }, { rows });
  assertClose(await gpu.read(losses.buffer, rows), eLosses, { ...TOL, label: "losses" });
  assertClose(await gpu.read(dlogits.buffer, rows * v), eD, {
    rtol: 1e-5,
    atol: 1e-6 / rows,
    label: "dlogits",
  });
  assertClose(await gpu.read(out.buffer, 1), eMean, { ...TOL, label: "mean loss" });
  return { losses, out };
}

Deno.test("cross-entropy and mean loss match the reference", async (t) => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      await t.step("rows=7, v=13", () => runCase(gpu, 7, 13, 1, 3).then(() => {}));
      await t.step("rows=1024, v=256", () => runCase(gpu, 1024, 256, 2, 4).then(() => {}));
      await t.step(
        "rows=9, v=20 with the gradient scaled for 3 micro-batches (scale 1/27)",
        () => runCase(gpu, 9, 20, 5, 3, 1 / 27).then(() => {}),
      );
      await t.step("large logits stay finite (rows=5, v=300, |x|<80)", async () => {
        const { losses } = await runCase(gpu, 5, 300, 3, 80);
        assert.ok((await gpu.read(losses.buffer, 5)).every(Number.isFinite));
      });
      await t.step("meanLoss is deterministic over 1000 rows", async () => {
        const rows = 1000;
        const losses = { buffer: gpu.storage(randomF32(rows, 4, 0, 6)), length: rows };
        const out = { buffer: gpu.storage(2), length: 2 };
        const d = meanLoss(gpu, { losses, out }, { rows });
        const got: Float32Array[] = [];
        for (let k = 0; k < 2; k++) {
          gpu.write(out.buffer, new Float32Array([k, k]));
          gpu.run([d]);
          got.push(await gpu.read(out.buffer, 1));
        }
        assert.ok(sameBits(got[0], got[1]));
      });
      await t.step("a target >= v gives a NaN loss", async () => {
        const r = (data: Float32Array | Uint32Array) => ({
          buffer: gpu.storage(data),
          length: data.length,
        });
        const losses = r(new Float32Array(2));
        gpu.run([
          crossEntropyForwardBackward(gpu, {
            logits: r(new Float32Array(6)),
            targets: r(new Uint32Array([1, 3])),
            losses,
            dlogits: r(new Float32Array(6)),
          }, { rows: 2, v: 3 }),
        ]);
        const l = await gpu.read(losses.buffer, 2);
        assertClose(l.subarray(0, 1), [Math.log(3)], { rtol: 1e-6, atol: 0, label: "loss" });
        assert.ok(Number.isNaN(l[1]));
      });
    });
  } finally {
    gpu.destroy();
  }
});
