/**
 * What `deno task experiment` reports: one result per configuration (a JSON
 * line with `--json`, a row of the markdown table otherwise) and the closing
 * summary line with the headline comparisons between the configurations that
 * ran.
 *
 * @module
 */
import type { SyncMode } from "../actors/overlap.ts";
import type { Adversary } from "./_byzantine.ts";
import type { ExperimentKind, ExperimentSettings } from "./_experiment_configs.ts";

/** The result of one configuration (one JSON line with `--json`). */
export interface ExperimentResult {
  event: "config";
  name: string;
  description: string;
  kind: ExperimentKind;
  trainers: number;
  batch: number;
  inner_steps: number | null;
  rounds: number | null;
  outer_lr: number | null;
  outer_momentum: number | null;
  outer_warmup_rounds: number | null;
  exchange: string | null;
  inner_reset: boolean | null;
  inner_schedule: "run" | "round" | null;
  /** Blocking or overlapped outer step (null for single trainers). */
  sync: SyncMode | null;
  /** Fragments synchronised in turn (null for single trainers). */
  fragments: number | null;
  /** Data shards of the training stream; trainer i reads shard i (null: the whole stream). */
  data_shards: number | null;
  /** The aggregation rule ("mean": the token-weighted mean; null for single trainers). */
  aggregate: string | null;
  /** What the hostile last trainer sends, if there is one. */
  adversary: Adversary | null;
  steps_per_trainer: number;
  tokens: number;
  /**
   * Bytes one trainer sends per round: the msgpack-encoded contribution
   * message, as the run counts it (fp32: 4 bytes a value; null for "single").
   */
  bytes_up_per_round_per_trainer: number | null;
  /** What fp32 data-parallel training sends per trainer in as many steps: 4 × params × H. */
  fp32_data_parallel_bytes_per_round_per_trainer: number | null;
  /** The second over the first. */
  reduction_vs_fp32_data_parallel: number | null;
  /** The update's format (null for "single"; fp32 rows download fp32). */
  update_exchange: string | null;
  /**
   * Bytes one trainer receives per round: the msgpack-encoded update message
   * (fp32: 4 bytes a value; null for "single").
   */
  bytes_down_per_round_per_trainer: number | null;
  /**
   * Both directions against fp32 data parallelism, which also receives the
   * mean gradient every step: 8 × params × H over bytes up + bytes down.
   */
  reduction_both_ways_vs_fp32_data_parallel: number | null;
  final_train_loss: number;
  final_eval_loss: number;
  eval_windows: number;
  wall_s: number;
}

/** The closing line: headline comparisons between the configurations that ran. */
export interface ExperimentSummary {
  event: "summary";
  steps_per_trainer: number;
  seed: number;
  eval_windows: number;
  losses: Record<string, number>;
  /** (int8 − fp32) / fp32 of the final eval loss, when both ran. */
  int8_vs_fp32_relative: number | null;
  /** (int4 − int8) / int8 of the final eval loss (the bar: within 0.01), when both ran. */
  int4_vs_int8_relative: number | null;
  /** (top-k − int8) / int8 of the final eval loss, when both ran. */
  topk_vs_int8_relative: number | null;
  /** single − diloco-int8 (positive: DiLoCo beats one trainer alone). */
  diloco_gain_over_single: number | null;
  /** diloco-int8 − single-4x (what is left to the data-parallel bound). */
  diloco_gap_to_4x: number | null;
  /** Fraction of the single → single-4x gap DiLoCo closes. */
  diloco_gap_closed: number | null;
  /**
   * Each Byzantine row's (loss − byz-honest4) / byz-honest4, when byz-honest4
   * ran; byz-honest5-robust is also measured against byz-honest5-mean
   * (`robust_cost_no_adversary`).
   */
  byzantine_vs_honest4: Record<string, number> | null;
  /** (byz-honest5-robust − byz-honest5-mean) / byz-honest5-mean, when both ran. */
  robust_cost_no_adversary: number | null;
  /** (diloco-overlap − diloco-int8) / diloco-int8 of the final eval loss, when both ran. */
  overlap_vs_blocking_relative: number | null;
  /** (diloco-overlap-frag − diloco-int8) / diloco-int8, when both ran. */
  overlap_frag_vs_blocking_relative: number | null;
  /**
   * (diloco-1000x − diloco-overlap) / diloco-overlap: what over 1,000× fewer
   * bytes both ways costs against the run's default, when both ran.
   */
  x1000_vs_default_relative: number | null;
  wall_s: number;
}

/** Builds the summary line from the results. */
export function summarizeExperiment(
  results: ExperimentResult[],
  s: ExperimentSettings,
  wallS: number,
): ExperimentSummary {
  const by = Object.fromEntries(results.map((r) => [r.name, r.final_eval_loss]));
  const r4 = (x: number) => Math.round(x * 10_000) / 10_000;
  const has = (...k: string[]) => k.every((x) => typeof by[x] === "number");
  return {
    event: "summary",
    steps_per_trainer: s.steps,
    seed: s.seed,
    eval_windows: results[0]?.eval_windows ?? 0,
    losses: by,
    int8_vs_fp32_relative: has("diloco-int8", "diloco-fp32")
      ? r4((by["diloco-int8"] - by["diloco-fp32"]) / by["diloco-fp32"])
      : null,
    int4_vs_int8_relative: has("diloco-int4", "diloco-int8")
      ? r4((by["diloco-int4"] - by["diloco-int8"]) / by["diloco-int8"])
      : null,
    topk_vs_int8_relative: has("diloco-topk", "diloco-int8")
      ? r4((by["diloco-topk"] - by["diloco-int8"]) / by["diloco-int8"])
      : null,
    diloco_gain_over_single: has("diloco-int8", "single")
      ? r4(by["single"] - by["diloco-int8"])
      : null,
    diloco_gap_to_4x: has("diloco-int8", "single-4x")
      ? r4(by["diloco-int8"] - by["single-4x"])
      : null,
    diloco_gap_closed: has("diloco-int8", "single-4x", "single")
      ? r4((by["single"] - by["diloco-int8"]) / (by["single"] - by["single-4x"]))
      : null,
    byzantine_vs_honest4: has("byz-honest4")
      ? Object.fromEntries(
        results.filter((r) => r.name.startsWith("byz-") && r.name !== "byz-honest4").map((
          r,
        ) => [r.name, r4((r.final_eval_loss - by["byz-honest4"]) / by["byz-honest4"])]),
      )
      : null,
    robust_cost_no_adversary: has("byz-honest5-mean", "byz-honest5-robust")
      ? r4((by["byz-honest5-robust"] - by["byz-honest5-mean"]) / by["byz-honest5-mean"])
      : null,
    overlap_vs_blocking_relative: has("diloco-overlap", "diloco-int8")
      ? r4((by["diloco-overlap"] - by["diloco-int8"]) / by["diloco-int8"])
      : null,
    overlap_frag_vs_blocking_relative: has("diloco-overlap-frag", "diloco-int8")
      ? r4((by["diloco-overlap-frag"] - by["diloco-int8"]) / by["diloco-int8"])
      : null,
    x1000_vs_default_relative: has("diloco-1000x", "diloco-overlap")
      ? r4((by["diloco-1000x"] - by["diloco-overlap"]) / by["diloco-overlap"])
      : null,
    wall_s: Math.round(wallS * 10) / 10,
  };
}

/** The results as a markdown table. */
export function markdownTable(results: ExperimentResult[]): string {
  const head =
    "| configuration | trainers × batch | H | outer lr | momentum | warm-up rounds | exchange | update | sync | fragments | bytes up per round and trainer | vs fp32 data parallel | bytes down | both ways vs fp32 data parallel | final eval loss | tokens | wall s |";
  const sep =
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |";
  const times = (x: number | null) => x === null ? "–" : `${x}×`;
  const dash = (x: number | string | null) => x === null ? "–" : String(x);
  const rows = results.map((r) =>
    `| ${r.name}: ${r.description} | ${r.trainers} × ${r.batch} | ${dash(r.inner_steps)} | ${
      dash(r.outer_lr)
    } | ${dash(r.outer_momentum)} | ${dash(r.outer_warmup_rounds)} | ${dash(r.exchange)} | ${
      dash(r.update_exchange)
    } | ${dash(r.sync)} | ${dash(r.fragments)} | ${
      dash(r.bytes_up_per_round_per_trainer?.toLocaleString("en-US") ?? null)
    } | ${times(r.reduction_vs_fp32_data_parallel)} | ${
      dash(r.bytes_down_per_round_per_trainer?.toLocaleString("en-US") ?? null)
    } | ${times(r.reduction_both_ways_vs_fp32_data_parallel)} | ${r.final_eval_loss.toFixed(4)} | ${
      r.tokens.toLocaleString("en-US")
    } | ${r.wall_s} |`
  );
  return [head, sep, ...rows].join("\n");
}
