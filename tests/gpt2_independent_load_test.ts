/**
 * A keeper's `runs/<name>/latest/model.safetensors` (the committed round,
 * reached through the `latest` symlink) is a plain Hugging Face GPT-2
 * checkpoint: the independent numpy GPT-2 of tests/gpt2_reference.py loads it
 * and agrees with `deno task eval` on it.
 */
import { assertEvalAgreesWithNumpy } from "./_numpy_gpt2.ts";
import { CheckpointStore } from "../checkpoint/store.ts";
import { getConfig } from "../kernels/config.ts";
import { buildLayout } from "../kernels/layout.ts";

Deno.test("gpt2 independent load: latest/model.safetensors of a committed round agrees with deno task eval", async () => {
  const dir = await Deno.makeTempDir({ prefix: "gpt2_latest_" });
  try {
    const config = getConfig("tiny").model;
    const layout = buildLayout(config);
    const params = new Float32Array(layout.totalLength);
    let s = 12345;
    for (const v of layout.views) {
      const one = /ln_\d\.weight|ln_f\.weight/.test(v.name);
      for (let i = 0; i < v.length; i++) {
        s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
        params[v.offset + i] = one ? 1 + (s / 2 ** 32 - 0.5) * 0.2 : (s / 2 ** 32 - 0.5) * 0.4;
      }
    }
    const runDir = `${dir}/runs/demo`;
    await new CheckpointStore(runDir).commit({
      run: "demo",
      round: 7,
      config,
      params,
      momentum: new Float32Array(params.length),
    });
    await assertEvalAgreesWithNumpy(`${runDir}/latest/model.safetensors`, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
