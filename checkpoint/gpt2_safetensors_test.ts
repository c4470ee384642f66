import { deepEqual, equal, rejects, throws } from "@std/assert";
import {
  CheckpointMismatchError,
  gpt2Tensors,
  loadGpt2,
  parseGpt2,
  saveGpt2,
  toHfConfig,
} from "./gpt2_safetensors.ts";
import {
  decodeSafetensors,
  encodeSafetensors,
  readSafetensors,
  SafetensorsError,
} from "./safetensors.ts";
import { getConfig } from "../kernels/config.ts";
import { buildLayout } from "../kernels/layout.ts";
import { initParams } from "../kernels/init.ts";

const tiny = getConfig("tiny").model;

Deno.test("GPT-2 checkpoint round trip uses HF names, shapes and config metadata", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const params = initParams(tiny, 7);
    const path = `${dir}/model.safetensors`;
    await saveGpt2(path, tiny, params, { metadata: { step: "3" } });
    const raw = await readSafetensors(path);
    deepEqual(JSON.parse(raw.metadata.config), {
      n_layer: 2,
      n_head: 2,
      n_embd: 16,
      block_size: 8,
      vocab_size: 256,
    });
    equal(raw.metadata.step, "3");
    deepEqual(raw.tensors.get("h.1.attn.c_attn.weight")?.shape, [16, 48]);
    deepEqual(raw.tensors.get("wte.weight")?.shape, [256, 16]);
    equal([...raw.tensors.keys()][0], "wte.weight");
    equal(raw.tensors.size, 2 + 12 * 2 + 2);
    const loaded = await loadGpt2(path, { expect: tiny });
    deepEqual(loaded.config, tiny);
    deepEqual(loaded.params, params);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("GPT-2 checkpoint load rejects a config or shape mismatch and missing metadata", async () => {
  const layout = buildLayout(tiny);
  const params = initParams(tiny, 1);
  const tensors = gpt2Tensors(layout, params);
  const good = decodeSafetensors(
    encodeSafetensors(tensors, { config: JSON.stringify(toHfConfig(tiny)) }),
  );
  throws(
    () => parseGpt2(good, "x", { expect: getConfig("small").model }),
    CheckpointMismatchError,
  );
  throws(
    () => parseGpt2(good, "x", { expect: getConfig("small").model }),
    /does not match the model config/,
  );
  // Metadata says n_embd 32 but the tensors are width 16.
  const lying = decodeSafetensors(encodeSafetensors(tensors, {
    config: JSON.stringify({ ...toHfConfig(tiny), n_embd: 32 }),
  }));
  throws(
    () => parseGpt2(lying, "x"),
    /tensor wte.weight has shape \[256,16\], the config needs \[256,32\]/,
  );
  const none = decodeSafetensors(encodeSafetensors(tensors));
  throws(() => parseGpt2(none, "x"), SafetensorsError);
  throws(() => parseGpt2(none, "x"), /__metadata__.config is missing/);
  const bad = decodeSafetensors(encodeSafetensors(tensors, { config: '{"n_layer": 2' }));
  throws(() => parseGpt2(bad, "x"), /__metadata__.config/);
  const { ["ln_f.bias"]: _drop, ...missing } = tensors;
  throws(
    () =>
      parseGpt2(
        decodeSafetensors(encodeSafetensors(missing, { config: JSON.stringify(toHfConfig(tiny)) })),
        "x",
      ),
    /lacks tensor ln_f.bias/,
  );
  await rejects(
    () => loadGpt2("/nonexistent/model.safetensors"),
    SafetensorsError,
    "does not exist",
  );
});
