import assert from "@std/assert";
import { bench, GPU_MODELS, guarded, misfit, summarize } from "./bench_gpu.ts";
import { dispatchFlops, groupProfile, kernelKind, profileStep } from "./step_profile.ts";
import { acquireGpu } from "./device.ts";
import { getConfig } from "./config.ts";
import { createModel } from "./model.ts";
import type { BenchRecord } from "../tests/bench_main.ts";
import { runCli } from "../tests/_cli_run.ts";

const UNITS: Record<string, string> = {
  gpu_step_tokens_per_s: "tokens/s",
  gpu_step_f16_tokens_per_s: "tokens/s",
  torch_step_tokens_per_s: "tokens/s",
  gpu_vs_torch_fp32: "ratio",
  gpu_model_skipped: "count",
  gpu_profile_step_ms: "ms",
  gpu_profile_kind: "ms",
  gpu_profile_family: "ms",
  gpu_tune_shape: "ratio",
  gpu_tuned_step_tokens_per_s: "tokens/s",
  attention_ms: "ms",
  attention_gflops: "GFLOP/s",
  gpu_key_pass_step_tokens_per_s: "tokens/s",
};

Deno.test("gpu suite, quick: well-formed records for the table and the profile, f16 beside f32", async () => {
  const records: BenchRecord[] = [];
  for await (const r of bench({ quick: true })) records.push(r);
  for (const r of records) {
    assert.equal(UNITS[r.name], r.unit, `${r.name}: unit ${r.unit}`);
    assert.ok(Number.isFinite(r.value) && r.value >= 0, `${r.name}: value ${r.value}`);
    for (const [k, v] of Object.entries(r)) {
      if (typeof v === "number") assert.ok(Number.isFinite(v), `${r.name}.${k} = ${v}`);
    }
    JSON.parse(JSON.stringify(r));
  }
  const rows = records.filter((r) => r.name === "gpu_step_tokens_per_s");
  assert.deepEqual(rows.map((r) => r.model), ["small"]);
  assert.ok(rows[0].value > 0);
  // Either PyTorch's figures or the reason they are missing.
  assert.ok(
    typeof rows[0].torch_fp32_tokens_per_s === "number" ||
      (typeof rows[0].torch_missing === "string" && rows[0].torch_missing.length > 0),
  );
  // lavapipe has shader-f16: the f16 figures sit beside the f32 ones.
  const half = records.filter((r) => r.name === "gpu_step_f16_tokens_per_s");
  assert.deepEqual(half.map((r) => r.model), ["small"]);
  assert.ok(Math.abs(Number(half[0].ratio_vs_f32) - half[0].value / rows[0].value) < 1e-3);
  const steps = records.filter((r) => r.name === "gpu_profile_step_ms");
  assert.deepEqual(steps.map((r) => r.precision), ["f32", "f16"]);
  const sum = (rs: BenchRecord[], k: "value" | "share_pct" | "count") =>
    rs.reduce((s, r) => s + Number(r[k]), 0);
  for (const step of steps) {
    assert.equal(step.model, "small");
    const mine = (name: string) =>
      records.filter((r) => r.name === name && r.precision === step.precision);
    const kinds = mine("gpu_profile_kind");
    const families = mine("gpu_profile_family");
    // Every dispatch of the small model's step is in exactly one kind and one family.
    assert.equal(sum(kinds, "count"), step.dispatches);
    assert.equal(sum(families, "count"), step.dispatches);
    assert.ok(Math.abs(sum(kinds, "value") - step.value) <= 1e-6 * step.value + 1e-9);
    assert.ok(Math.abs(sum(families, "share_pct") - 100) < 0.1);
    for (const k of ["attention forward", "attention backward", "adamw", "cross-entropy"]) {
      assert.ok(kinds.some((r) => r.kind === k), `kind ${k}`);
    }
    const matmul = families.find((r) => r.kind === "matmul (all)")!;
    assert.equal(matmul.count, 27, "2 layers x (4 forward + 8 backward) + head forward and 2 back");
    assert.ok(typeof matmul.gflops === "number" && matmul.gflops > 0);
    // f16: the 9 weights' copies and 2 layers x 4 activations + lnf.
    const casts = kinds.find((r) => r.kind === "cast to f16")?.count ?? 0;
    assert.equal(casts, step.precision === "f16" ? 9 + 9 : 0);
  }
  const text = summarize(records);
  assert.match(text, /\| small \| L2 C64 H4 T64 V256 \| [\d,]+ \| [\d,]+ \| [\d.]+ \|/);
  assert.match(text, /\| matmul \(all\) \| 27 \|/);
  assert.match(text, /batch 16, f16\): /);
  // The tuner's part: one record per distinct matmul shape of the step, the choice among those
  // tried, and the tuned step beside the default one.
  const tuned = records.filter((r) => r.name === "gpu_tune_shape");
  assert.ok(tuned.length >= 10 && tuned.length <= 27, `${tuned.length} shapes`);
  assert.equal(new Set(tuned.map((r) => r.shape)).size, tuned.length);
  for (const r of tuned) {
    assert.ok(
      String(r.tried).includes(`${r.variant} `),
      `${r.shape}: ${r.variant} not in ${r.tried}`,
    );
    assert.ok(Number(r.ms) <= Number(r.default_ms), `${r.shape}: ${r.ms} > ${r.default_ms}`);
  }
  const step = records.find((r) => r.name === "gpu_tuned_step_tokens_per_s")!;
  assert.equal(step.shapes_tuned, tuned.length);
  assert.ok(Number(step.default_tokens_per_s) > 0 && step.value > 0);
  assert.match(text, /Matmul tuning on small \(f32\): [\d,]+ tokens\/s tuned against [\d,]+/);
  assert.match(text, new RegExp(`\\| ${tuned[0].shape} \\| ${tuned[0].default_variant} \\|`));
  // Attention at the model's shape: both families forward and backward, the flash backward with
  // each key pass (fused is the default at head size 16), then the step with each key pass.
  const att = records.filter((r) => r.name === "attention_ms");
  assert.deepEqual(
    att.map((r) => [r.kernel, r.pass, r.key_pass ?? ""]),
    [
      ["blocked", "forward", ""],
      ["blocked", "backward", ""],
      ["flash", "forward", ""],
      ["flash", "backward", "fused"],
      ["flash", "backward", "split"],
    ],
  );
  for (const r of att) assert.deepEqual([r.model, r.b, r.t, r.layers], ["small", 16, 64, 2]);
  assert.equal(records.filter((r) => r.name === "attention_gflops").length, att.length);
  const keyPass = records.filter((r) => r.name === "gpu_key_pass_step_tokens_per_s");
  assert.deepEqual(keyPass.map((r) => [r.key_pass, r.default]), [["fused", true], [
    "split",
    false,
  ]]);
  assert.equal(keyPass[0].ratio_vs_fused, 1);
  assert.match(text, /\| flash \| backward \| fused \(default\) \| [\d.]+ \| [\d.]+ \| [\d.,]+ \|/);
  assert.match(
    text,
    /Training step of small with flash attention \(f32\), tokens\/s: fused \(default\) [\d,]+ \(1x fused\), split [\d,]+/,
  );
  // The targets, checked on the profiled model in f32, close the report.
  const attShare = records
    .filter((r) =>
      r.name === "gpu_profile_kind" && r.precision === "f32" && String(r.kind).includes("attention")
    )
    .reduce((s, r) => s + Number(r.share_pct), 0);
  assert.ok(attShare > 0);
  assert.match(
    text,
    /Targets on small \(L2 C64 H4 T64 V256, batch 16, f32\):\n- our step >= 0\.5x PyTorch fp32 eager tokens\/s: .*\n- attention <= 20% of our step: [\d.]+%, (met|NOT met)$/,
  );
  // The report's order: table, profiles, attention, tuning.
  assert.ok(text.indexOf("Profile of one step") < text.indexOf("Attention of small"));
  assert.ok(text.indexOf("Attention of small") < text.indexOf("Matmul tuning on small"));
});

Deno.test("a part that throws becomes a gpu_part_failed record and the report goes on", async () => {
  async function* part(fail: boolean): AsyncGenerator<BenchRecord> {
    yield { name: "gpu_profile_step_ms", value: 1, unit: "ms" };
    if (fail) throw new RangeError("Cannot build model: out of memory");
    yield { name: "gpu_profile_step_ms", value: 2, unit: "ms" };
  }
  const records: BenchRecord[] = [];
  for await (const r of guarded("profile f32", part(true))) records.push(r);
  for await (const r of guarded("attention", part(false))) records.push(r);
  assert.deepEqual(records.map((r) => [r.name, r.value]), [
    ["gpu_profile_step_ms", 1],
    ["gpu_part_failed", 1],
    ["gpu_profile_step_ms", 1],
    ["gpu_profile_step_ms", 2],
  ]);
  assert.equal(records[1].part, "profile f32");
  assert.equal(records[1].error, "RangeError: Cannot build model: out of memory");
  assert.match(
    summarize([records[1]]),
    /Parts that failed \(the report went on without them\):\n\n- profile f32: RangeError: Cannot build model: out of memory/,
  );
});

Deno.test("--time-limit: parts not started in time are recorded as skipped and the summary still prints", async () => {
  const records: BenchRecord[] = [];
  for await (const r of bench({ quick: true, timeLimitS: 0 })) records.push(r);
  const skipped = records.filter((r) => r.name === "gpu_part_skipped");
  const gpu = await acquireGpu();
  const hasF16 = gpu.hasF16;
  gpu.destroy();
  assert.deepEqual(skipped.map((r) => r.part), [
    "table row small",
    "profile f32",
    ...(hasF16 ? ["profile f16"] : []),
    "attention",
    "matmul tuning",
  ]);
  assert.equal(records.filter((r) => r.name.startsWith("gpu_profile")).length, 0);
  assert.match(
    summarize(records),
    /Parts not run \(the time limit of 0 s had passed\): table row small, profile f32/,
  );
  // The flag is checked like every number flag of the commands.
  const out = await runCli("tests/bench_main.ts", ["--only", "gpu", "--time-limit", "soon"]);
  assert.equal(out.code, 2);
  assert.match(out.stderr, /Invalid --time-limit: "soon"/);
});

Deno.test("a model that cannot fit is named with the model's own reason", () => {
  const limits = { maxBindingBytes: 128 * 2 ** 20, maxBufferBytes: 256 * 2 ** 20 };
  const cpu = { isCpu: true, limits };
  const [small, , , l8, l12] = GPU_MODELS.map((m) => m.config);
  assert.equal(misfit(small, 16, cpu), undefined);
  assert.equal(misfit(l8, 16, cpu), undefined); // 25.5 M params: 97 MiB
  // GPT-2 small width: 85 M parameters, 326 MiB, over the buffer limit (bindings are chunked).
  assert.match(
    misfit(l12, 16, cpu) ?? "",
    /^Cannot build model L12 C768 H12 T256 V256 at batch 16: the flat parameter vector .* needs 326 MiB, more than the 256 MiB buffer limit \(maxBufferSize\)/,
  );
  // The CPU attention's probabilities dominate at long context: 16 x 4 x 2048² floats;
  // flash attention, chosen on GPUs, keeps none.
  const long = { ...small, blockSize: 2048 };
  assert.match(misfit(long, 16, cpu) ?? "", /att .*\[16, 4, 2048, 2048\] needs 1.00 GiB/);
  assert.equal(misfit(long, 16, { isCpu: false, limits }), undefined);
});

Deno.test("kernel kinds and FLOPs from dispatch labels", () => {
  const config = GPU_MODELS[0].config;
  assert.equal(
    kernelKind("matmul_tiled_NT_4096x768x3072+geluBackward"),
    "matmul NT 4096x768x3072 +geluBackward",
  );
  assert.equal(kernelKind("matmul_reg32x8v_TN_256x64x1024"), "matmul TN 256x64x1024");
  assert.equal(kernelKind("layernormBackward partial"), "layernorm backward");
  assert.equal(kernelKind("gradNorm total"), "grad norm");
  assert.equal(kernelKind("somethingNew x"), "somethingNew");
  assert.equal(
    dispatchFlops("matmul_tiled_TN_64x192x1024+colSum", config, 16),
    2 * 64 * 192 * 1024,
  );
  // 4·B·T²·C each: QKᵀ and P·V forward; dP, dQ (queries) and dK, dV (keys) backward.
  assert.equal(dispatchFlops("attentionForward", config, 16), 4 * 16 * 64 * 64 * 64);
  assert.equal(dispatchFlops("attentionBackward keys", config, 2), 4 * 2 * 64 * 64 * 64);
  assert.equal(kernelKind("flashAttentionBackward dv"), "flash attention backward");
  assert.equal(dispatchFlops("flashAttentionBackward keys", config, 2), 4 * 2 * 64 * 64 * 64);
  assert.equal(dispatchFlops("flashAttentionBackward dk", config, 2), 2 * 2 * 64 * 64 * 64);
  assert.equal(dispatchFlops("layernormForward", config, 16), undefined);
  const groups = groupProfile([
    { label: "a", part: "forward", kind: "x", ms: 1, flops: 10 },
    { label: "b", part: "forward", kind: "x", ms: 2, flops: 20 },
    { label: "c", part: "backward", kind: "y", ms: 1 },
  ]);
  assert.deepEqual(groups, [
    { kind: "x", count: 2, ms: 3, share: 0.75, flops: 30 },
    { kind: "y", count: 1, ms: 1, share: 0.25, flops: undefined },
  ]);
});

Deno.test("profileStep without timestamps times every dispatch alone", async () => {
  const gpu = await acquireGpu(); // no features requested: no timestamp-query
  const { model: config, train } = getConfig("tiny");
  const model = await createModel(gpu, config, { seed: 1, batch: train.batch });
  try {
    const x = new Uint8Array(train.batch * config.blockSize).map((_, i) => (i * 37) & 255);
    await model.step(x, x, { lr: 1e-3 });
    await assert.rejects(
      () => profileStep(gpu, model, { method: "timestamp-query" }),
      TypeError,
    );
    await assert.rejects(() => profileStep(gpu, model, { reps: 0 }), RangeError);
    const profile = await profileStep(gpu, model, { reps: 2 });
    assert.equal(profile.method, "alone");
    const labels = model.profileDispatches().dispatches.map((d) => d.dispatch.label);
    assert.deepEqual(profile.dispatches.map((d) => d.label), labels);
    assert.equal(labels[0], "embeddingForward");
    assert.equal(labels.at(-1), "adamw");
    for (const d of profile.dispatches) assert.ok(Number.isFinite(d.ms) && d.ms >= 0, d.label);
    // The replayed steps trained the model like steps do: its loss is still finite.
    assert.ok(Number.isFinite(await model.step(x, x, { lr: 1e-3 })));
  } finally {
    model.dispose();
    gpu.destroy();
  }
});
