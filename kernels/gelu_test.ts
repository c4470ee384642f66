import assert from "@std/assert";
import { acquireGpu } from "./device.ts";
import { geluBackward, geluForward } from "./gelu.ts";
import { geluBackwardRef, geluForwardRef } from "./reference.ts";
import { assertClose, noGpuErrors, randomF32 } from "./_testing.ts";

// Tolerance: f32 tanh on the GPU vs f64 in the reference.
const TOL = { rtol: 1e-5, atol: 2e-6 };

Deno.test("gelu forward and backward match the TypeScript reference", async (t) => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      for (const n of [13, 4096 + 3]) {
        await t.step(`n=${n}, including large |x|`, async () => {
          const inp = randomF32(n, 3, -6, 6);
          inp[0] = 40;
          inp[1] = -40;
          inp[2] = 0;
          const dout = randomF32(n, 4);
          const dinp0 = randomF32(n, 5);
          const gi = gpu.storage(inp);
          const go = gpu.storage(n);
          const gd = gpu.storage(dout);
          const gdi = gpu.storage(dinp0);
          const ref = (b: GPUBuffer) => ({ buffer: b, length: n });
          gpu.run([
            geluForward(gpu, { inp: ref(gi), out: ref(go) }, { n }),
            geluBackward(gpu, { dinp: ref(gdi), inp: ref(gi), dout: ref(gd) }, { n }),
          ]);
          const out = new Float32Array(n);
          geluForwardRef({ inp, out }, { n });
          const dinp = dinp0.slice();
          geluBackwardRef({ dinp, inp, dout }, { n });
          const gotOut = await gpu.read(go, n);
          assertClose(gotOut, out, { ...TOL, label: "gelu out" });
          assert.equal(gotOut[0], 40);
          assert.ok(gotOut[1] === 0, `gelu(-40) is ${gotOut[1]}`);
          assertClose(await gpu.read(gdi, n), dinp, { ...TOL, label: "gelu dinp" });
        });
      }
    });
  } finally {
    gpu.destroy();
  }
});
