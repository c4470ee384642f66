import { deepEqual, equal, ok } from "@std/assert";
import { buildLayout, countParams, VIEW_ALIGN } from "./layout.ts";
import { getConfig } from "./config.ts";

Deno.test("layout views are 256-byte aligned, disjoint, and use HF GPT-2 names and shapes", () => {
  const config = getConfig("small").model;
  const layout = buildLayout(config);
  let end = 0;
  for (const v of layout.views) {
    equal(v.offset % VIEW_ALIGN, 0, v.name);
    ok(v.offset >= end, `${v.name} overlaps`);
    end = v.offset + v.length;
  }
  ok(end <= layout.totalLength);
  equal(layout.totalLength % VIEW_ALIGN, 0);
  equal(layout.paramCount, countParams(config));
  const C = 64;
  deepEqual(layout.byName.get("wte.weight")?.shape, [256, C]);
  deepEqual(layout.byName.get("wpe.weight")?.shape, [64, C]);
  deepEqual(layout.byName.get("h.1.attn.c_attn.weight")?.shape, [C, 3 * C]);
  deepEqual(layout.byName.get("h.1.attn.c_attn.bias")?.shape, [3 * C]);
  deepEqual(layout.byName.get("h.0.mlp.c_fc.weight")?.shape, [C, 4 * C]);
  deepEqual(layout.byName.get("h.0.mlp.c_proj.weight")?.shape, [4 * C, C]);
  deepEqual(layout.byName.get("ln_f.bias")?.shape, [C]);
  equal(layout.views.length, 2 + 12 * 2 + 2);
});

Deno.test("layout puts 2-D tensors (weight decay) before 1-D tensors", () => {
  const layout = buildLayout(getConfig("tiny").model);
  for (const v of layout.views) {
    const inDecay = v.offset < layout.decayRegion.offset + layout.decayRegion.length;
    equal(inDecay, v.shape.length === 2, v.name);
    equal(v.decay, v.shape.length === 2, v.name);
  }
  equal(layout.noDecayRegion.offset + layout.noDecayRegion.length, layout.totalLength);
});
