import { equal } from "@std/assert";
import { acquireGpu } from "./device.ts";
import { mergeRange, mergeRangeRef } from "./overlap_merge.ts";
import { noGpuErrors, randomF32, sameBits } from "./_testing.ts";

Deno.test("mergeRange: a range of the flat vector, bit-exact with its twin", async () => {
  const gpu = await acquireGpu();
  try {
    await noGpuErrors(gpu.device, async () => {
      const n = 1536;
      const lo = 512;
      const hi = 1300;
      const running = randomF32(n, 1);
      const global = randomF32(n, 2);
      const incoming = randomF32(n, 3);
      const delta = randomF32(n, 4);
      const bufs = [running, global, incoming, delta].map((a) => gpu.storage(a));
      const at = (buffer: GPUBuffer) => ({ buffer, offset: lo * 4, length: hi - lo });
      gpu.run([mergeRange(gpu, {
        running: at(bufs[0]),
        global: at(bufs[1]),
        incoming: at(bufs[2]),
        delta: at(bufs[3]),
      }, { n: hi - lo })]);
      const gotRunning = await gpu.read(bufs[0], n);
      const gotGlobal = await gpu.read(bufs[1], n);
      const wantRunning = new Float32Array(running);
      const wantGlobal = new Float32Array(global);
      mergeRangeRef(
        { running: wantRunning, global: wantGlobal, incoming, delta },
        { lo, hi },
      );
      equal(sameBits(gotRunning, wantRunning), true);
      equal(sameBits(gotGlobal, wantGlobal), true);
      // Outside [lo, hi) nothing changed.
      equal(gotRunning[lo - 1], running[lo - 1]);
      equal(gotGlobal[hi], global[hi]);
    });
  } finally {
    gpu.destroy();
  }
});
