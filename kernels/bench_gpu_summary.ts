/**
 * The GPU report's records (kernels/bench_gpu.ts) as Markdown for a reader of
 * the device's output: the tokens/s table (f16 beside f32), the profile by
 * kind in each precision, attention at the model's shape, the matmul tuning,
 * the parts that failed or were not run, and last the verdict on the targets.
 *
 * @module
 */
import type { BenchRecord } from "../tests/bench_main.ts";

/** Step 3's records as Markdown: the kernels at the model's shape, then the step per key pass. */
function attentionSummary(records: BenchRecord[]): string[] {
  const kernels = records.filter((r) => r.name === "attention_ms" && r.model !== undefined);
  if (kernels.length === 0) return [];
  const first = kernels[0];
  const gflops = (r: BenchRecord) =>
    records.find((g) =>
      g.name === "attention_gflops" && g.kernel === r.kernel && g.pass === r.pass &&
      g.key_pass === r.key_pass
    )?.value;
  const lines = [
    "",
    `Attention of ${first.model} alone (b ${first.b}, t ${first.t}, c ${first.c}, nh ${first.nh}), ` +
    `per layer and per step of ${first.layers} layers`,
    "",
    "| kernels | pass | key pass | ms/layer | ms/step | GFLOP/s |",
    "| --- | --- | --- | ---: | ---: | ---: |",
  ];
  for (const r of kernels) {
    const keyPass = r.key_pass === undefined
      ? ""
      : `${r.key_pass}${r.key_pass === r.default_key_pass ? " (default)" : ""}`;
    lines.push(
      `| ${r.kernel} | ${r.pass} | ${keyPass} | ${num(r.value, 3)} | ${
        num(r.value * Number(r.layers), 2)
      } | ${num(gflops(r), 1)} |`,
    );
  }
  const steps = records.filter((r) => r.name === "gpu_key_pass_step_tokens_per_s");
  if (steps.length > 0) {
    lines.push(
      "",
      `Training step of ${steps[0].model} with flash attention (f32), tokens/s: ` +
        steps.map((r) =>
          `${r.key_pass}${r.default ? " (default)" : ""} ${num(r.value)} (${
            num(r.ratio_vs_fused, 3)
          }x fused)`
        ).join(", "),
    );
  }
  return lines;
}

/**
 * The engine's GPU targets, checked on the profiled model in f32: our step at
 * least {@linkcode TARGET_VS_TORCH} of PyTorch fp32 eager's tokens/s (same
 * run), attention at most {@linkcode TARGET_ATTENTION_SHARE} of our step (the
 * profile); each line says met, not met, or what is missing to tell.
 */
function targetsSummary(records: BenchRecord[]): string[] {
  const step = records.find((r) => r.name === "gpu_profile_step_ms" && r.precision === "f32");
  if (!step) return [];
  const row = records.find((r) => r.name === "gpu_step_tokens_per_s" && r.model === step.model);
  const verdict = (ok: boolean) => (ok ? "met" : "NOT met");
  const ratio = row?.ratio_vs_torch_fp32;
  const attention = records
    .filter((r) =>
      r.name === "gpu_profile_kind" && r.precision === "f32" && String(r.kind).includes("attention")
    )
    .reduce((s, r) => s + Number(r.share_pct), 0);
  return [
    "",
    `Targets on ${step.model} (${step.shape}, batch ${step.batch}, f32):`,
    typeof ratio === "number"
      ? `- our step >= ${TARGET_VS_TORCH}x PyTorch fp32 eager tokens/s: ${num(ratio, 3)}x, ${
        verdict(ratio >= TARGET_VS_TORCH)
      }`
      : `- our step >= ${TARGET_VS_TORCH}x PyTorch fp32 eager tokens/s: no PyTorch figure (${
        row?.torch_missing ?? "no table row for the model"
      })`,
    `- attention <= ${TARGET_ATTENTION_SHARE * 100}% of our step: ${num(attention, 1)}%, ${
      verdict(attention <= TARGET_ATTENTION_SHARE * 100)
    }`,
  ];
}

/** Our f32 step's tokens/s against PyTorch fp32 eager's that the report checks for. */
export const TARGET_VS_TORCH = 0.5;

/** The most of our step that attention may take, as the report checks it. */
export const TARGET_ATTENTION_SHARE = 0.2;

/** Step 4's records as Markdown: the tuned step, then each shape's choice. */
function tuningSummary(records: BenchRecord[]): string[] {
  const lines: string[] = [];
  const tunedStep = records.find((r) => r.name === "gpu_tuned_step_tokens_per_s");
  if (tunedStep) {
    lines.push(
      "",
      `Matmul tuning on ${tunedStep.model} (f32): ${num(tunedStep.value)} tokens/s tuned against ${
        num(tunedStep.default_tokens_per_s)
      } with the built-in choices (${
        num(tunedStep.ratio_vs_default, 3)
      }x); ${tunedStep.changed} of ${tunedStep.shapes_tuned} shapes changed, tuning took ${
        num(tunedStep.tune_seconds, 1)
      } s`,
      "",
      "| shape | built-in | ms | tuned | ms | speed-up |",
      "| --- | --- | ---: | --- | ---: | ---: |",
    );
    for (const r of records.filter((r) => r.name === "gpu_tune_shape")) {
      lines.push(
        `| ${r.shape} | ${r.default_variant} | ${num(r.default_ms, 4)} | ${r.variant} | ${
          num(r.ms, 4)
        } | ${num(r.value, 2)} |`,
      );
    }
  }
  return lines;
}

const num = (v: unknown, digits = 0) =>
  typeof v === "number" ? v.toLocaleString("en-US", { maximumFractionDigits: digits }) : "–";

/**
 * The suite's records as Markdown: the tokens/s table (f16 beside f32) and
 * the profile by kind in each precision, for a reader of the device's output.
 */
export function summarize(records: BenchRecord[]): string {
  const lines: string[] = [];
  const rows = records.filter((r) => r.name === "gpu_step_tokens_per_s");
  const skipped = records.filter((r) => r.name === "gpu_model_skipped");
  const f16 = (model: unknown) =>
    records.find((r) => r.name === "gpu_step_f16_tokens_per_s" && r.model === model);
  if (rows.length > 0 || skipped.length > 0) {
    lines.push(
      `Training step, batch ${rows[0]?.batch ?? ""}, tokens/s (${String(rows[0]?.adapter ?? "")})`,
      "",
      "| model | shape | ours f32 | ours f16 | f16 / f32 | PyTorch fp32 eager | ours f32 / fp32 | PyTorch TF32 |",
      "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    );
    for (const r of rows) {
      const h = f16(r.model);
      lines.push(
        `| ${r.model} | ${r.shape} | ${num(r.value)} | ${num(h?.value)} | ${
          num(h?.ratio_vs_f32, 3)
        } | ${num(r.torch_fp32_tokens_per_s)} | ${num(r.ratio_vs_torch_fp32, 3)} | ${
          num(r.torch_tf32_tokens_per_s)
        } |`,
      );
    }
    for (const r of skipped) {
      lines.push(`| ${r.model} | ${r.shape} | skipped: ${r.reason} | | | | | |`);
    }
    const missing = rows.find((r) => r.torch_missing)?.torch_missing;
    if (missing) lines.push("", `PyTorch columns missing: ${missing}`);
    const noF16 = rows.find((r) => r.f16_missing)?.f16_missing;
    if (noF16) lines.push("", `f16 columns missing: ${noF16}`);
  }
  for (const step of records.filter((r) => r.name === "gpu_profile_step_ms")) {
    const mine = (r: BenchRecord) => r.precision === step.precision;
    lines.push(
      "",
      `Profile of one step of ${step.model} (${step.shape}, batch ${step.batch}, ${step.precision}): ${
        num(step.value, 1)
      } ms in ${step.dispatches} dispatches (${step.method}, median of ${step.reps}); ` +
        `the pipelined step measured ${num(step.wall_step_ms, 1)} ms`,
      "",
      "| kind | dispatches | ms/step | ms/call | % of step | GFLOP/s |",
      "| --- | ---: | ---: | ---: | ---: | ---: |",
    );
    // Families first, then the matmuls by layout and shape (the other kinds are families).
    const families = records.filter((r) => r.name === "gpu_profile_family" && mine(r));
    const matmuls = records.filter((r) =>
      r.name === "gpu_profile_kind" && mine(r) && String(r.kind).startsWith("matmul")
    );
    for (const r of [...families, ...matmuls]) {
      lines.push(
        `| ${r.kind} | ${r.count} | ${num(r.value, 2)} | ${num(r.ms_per_call, 3)} | ${
          num(r.share_pct, 1)
        } | ${num(r.gflops, 1)} |`,
      );
    }
  }
  lines.push(...attentionSummary(records), ...tuningSummary(records));
  const failed = records.filter((r) => r.name === "gpu_part_failed");
  if (failed.length > 0) {
    lines.push("", "Parts that failed (the report went on without them):", "");
    for (const r of failed) lines.push(`- ${r.part}: ${r.error}`);
  }
  const notRun = records.filter((r) => r.name === "gpu_part_skipped");
  if (notRun.length > 0) {
    lines.push("", `Parts not run (${notRun[0].reason}): ${notRun.map((r) => r.part).join(", ")}`);
  }
  lines.push(...targetsSummary(records));
  return lines.join("\n");
}
