import { deepEqual, equal, ok, throws } from "@std/assert";
import { evaluate, selectWindows, windowCount } from "./evaluate.ts";
import { acquireGpu } from "./device.ts";
import { getConfig } from "./config.ts";
import { createModel } from "./model.ts";

Deno.test("windowCount drops a trailing window shorter than T+1 bytes", () => {
  equal(windowCount(64, 64), 0);
  equal(windowCount(65, 64), 1);
  equal(windowCount(128, 64), 1);
  equal(windowCount(129, 64), 2);
  equal(windowCount(10, 3), 3);
});

Deno.test("selectWindows takes the first N, or N spread evenly", () => {
  deepEqual(selectWindows(5), [0, 1, 2, 3, 4]);
  deepEqual(selectWindows(5, { maxWindows: 3 }), [0, 1, 2]);
  deepEqual(selectWindows(10, { maxWindows: 4, selection: "spread" }), [0, 2, 5, 7]);
  deepEqual(selectWindows(3, { maxWindows: 9, selection: "spread" }), [0, 1, 2]);
  throws(() => selectWindows(3, { maxWindows: 0 }), /Invalid max windows/);
});

Deno.test("selectWindows of a part takes every count-th of the selection, and checks the part", () => {
  const spread = { maxWindows: 4, selection: "spread" as const };
  deepEqual(selectWindows(10, { ...spread, part: { index: 0, count: 2 } }), [0, 5]);
  deepEqual(selectWindows(10, { ...spread, part: { index: 1, count: 2 } }), [2, 7]);
  deepEqual(selectWindows(2, { part: { index: 2, count: 3 } }), []);
  throws(
    () => selectWindows(5, { part: { index: 2, count: 2 } }),
    /index 2 \(expected an integer from 0 to 1\)/,
  );
  throws(() => selectWindows(5, { part: { index: 0, count: 0 } }), /count 0/);
});

Deno.test("an evaluation in parts: the parts' token-weighted mean is the whole one's loss", async () => {
  const gpu = await acquireGpu();
  const config = getConfig("tiny").model;
  const model = await createModel(gpu, config, { seed: 3, batch: 4 });
  try {
    const T = config.blockSize;
    const bytes = new Uint8Array(20 * T + 1).map((_, i) => (i * 7919) % 97 + 32);
    const options = { maxWindows: 11, selection: "spread" as const };
    const whole = await evaluate(model, bytes, options);
    let sum = 0;
    let tokens = 0;
    let windows = 0;
    for (let index = 0; index < 3; index++) {
      const p = await evaluate(model, bytes, { ...options, part: { index, count: 3 } });
      sum += p.loss * p.tokens;
      tokens += p.tokens;
      windows += p.windows;
    }
    equal(windows, 11);
    equal(tokens, whole.tokens);
    ok(Math.abs(sum / tokens - whole.loss) < 1e-9 * whole.loss, `${sum / tokens} vs ${whole.loss}`);
  } finally {
    model.dispose();
    gpu.destroy();
  }
});
