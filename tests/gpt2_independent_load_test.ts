/**
 * A keeper's `runs/<name>/latest/model.safetensors` (the committed round,
 * reached through the `latest` symlink) is a plain Hugging Face GPT-2
 * checkpoint: the independent numpy GPT-2 of tests/gpt2_reference.py loads it
 * and agrees with `deno task eval` on it.
 */
import { equal } from "@std/assert";
import { assertAgreesWithNumpy } from "./_numpy_gpt2.ts";
import { CheckpointStore } from "../checkpoint/store.ts";
import { getConfig } from "../kernels/config.ts";
import { buildLayout } from "../kernels/layout.ts";

const ROOT = new URL("../", import.meta.url).pathname;

async function run(cmd: string, args: string[]) {
  const out = await new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
    env: { XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp" },
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

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
    const model = `${runDir}/latest/model.safetensors`;
    const data = `${dir}/data.txt`;
    await Deno.writeTextFile(
      data,
      "It is a truth universally acknowledged, that a single man in possession of a good fortune, " +
        "must be in want of a wife. ".repeat(8),
    );
    const ev = await run(Deno.execPath(), [
      "run",
      "-A",
      `${ROOT}kernels/eval_main.ts`,
      "--checkpoint",
      model,
      "--data",
      data,
      "--max-windows",
      "32",
      "--json",
    ]);
    equal(ev.code, 0, ev.stderr);
    const mine = JSON.parse(ev.stdout.trim().split("\n").at(-1)!);
    await assertAgreesWithNumpy(mine, { checkpoint: model, data, maxWindows: 32 });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
