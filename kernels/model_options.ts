/**
 * The options of a GPT-2 model ({@linkcode ModelOptions}), their defaults and
 * their validation, done before the model allocates anything.
 *
 * @module
 */
import type { Gpu } from "./device.ts";
import type { BufferLimits } from "./limits.ts";
import type { MatmulTuner } from "./matmul_tune.ts";
import type { KeyPass } from "./_flash_wgsl.ts";

/** Options for `createModel` (kernels/model.ts). */
export interface ModelOptions {
  /** Seed of the parameter init (default 0). */
  seed?: number;
  /** Sequences per step (default 1). Every step and eval call uses this batch size. */
  batch?: number;
  /** AdamW decoupled weight decay on 2-D tensors (default 0.1). */
  weightDecay?: number;
  /** AdamW beta1 (default 0.9). */
  beta1?: number;
  /** AdamW beta2 (default 0.95). */
  beta2?: number;
  /** AdamW epsilon (default 1e-8). */
  eps?: number;
  /** Clip the global gradient norm to this (default 1; 0 disables clipping). */
  maxGradNorm?: number;
  /** Matmul variant for every matmul (default: chosen by matmul.ts from the adapter and shape). */
  matmulVariant?: string;
  /**
   * Measure the matmul variants on the device and use the fastest per shape
   * (kernels/matmul_tune.ts): `createModel` measures the model's shapes the
   * tuner has no choice for yet, then builds every matmul with the tuner's
   * choice. Ignored when `matmulVariant` is given.
   */
  matmulTuner?: MatmulTuner;
  /**
   * Attention kernels: "blocked" (kernels/attention.ts, register-blocked for CPU adapters, saves
   * [B,NH,T,T] probabilities) or "flash" (kernels/flash_attention.ts, workgroup tiles for GPUs,
   * saves [B,NH,T] log-sum-exps). Default: "blocked" on CPU adapters, "flash" otherwise.
   */
  attention?: AttentionKind;
  /**
   * How flash attention's backward sums the keys' and values' gradients
   * (kernels/flash_attention.ts): "fused", one pass for both, or "split", a
   * pass for each, which holds fewer registers per invocation. Default: with
   * a `matmulTuner`, the faster on this device as it measures it; otherwise
   * split from head size 64 (`defaultKeyPass`). Either way the same sums in
   * the same order; ignored with blocked attention.
   */
  flashKeyPass?: KeyPass;
  /**
   * Micro-batches per step (default 1): a step takes `gradAccum × batch`
   * sequences, runs forward and backward on `batch` of them at a time, sums
   * their gradients on the GPU (scaled so that the sum is the gradient of the
   * mean loss over all of them) and makes one clip and AdamW update, as one
   * step on the whole batch would.
   */
  gradAccum?: number;
  /**
   * Bind at most this many bytes at once (default: the Gpu's
   * `limits.maxBindingBytes`; at most that). Whole-vector kernels are
   * dispatched in chunks of this size; tests lower it to exercise them.
   */
  maxBindingBytes?: number;
  /**
   * How the matmuls read their inputs: "f32", or "f16" (mixed precision):
   * the activations that feed a matmul and a per-step copy of the weights are
   * cast to f16, the products are summed in f32, and everything else (master
   * weights, gradients, AdamW, LayerNorm statistics, residual stream,
   * softmax, logits, loss) stays f32. "f16" needs the device feature
   * `shader-f16`. Default "f32" on every adapter: at the `small` config's
   * learning rate f16 ended 0.86% above f32 on the mean of twelve seeds, whose
   * spread leaves that within a standard error of 1% (README, "The loss curves
   * of f16 and f32"), and its speed on a GPU is not measured yet.
   */
  precision?: Precision;
}

/** How a model's matmuls read their inputs (see {@linkcode ModelOptions.precision}). */
export type Precision = "f32" | "f16";

/** The attention kernel families a model can use (see {@linkcode ModelOptions.attention}). */
export type AttentionKind = "blocked" | "flash";

/** The AdamW hyper-parameters of {@linkcode ModelOptions}, defaults applied. */
export type AdamwOptions = Required<
  Pick<ModelOptions, "weightDecay" | "beta1" | "beta2" | "eps" | "maxGradNorm">
>;

/** {@linkcode ModelOptions} checked, with their defaults applied. */
export interface ResolvedModelOptions {
  /** Sequences per micro-batch. */
  batch: number;
  /** The attention kernels. */
  attention: AttentionKind;
  /** Flash attention's key pass, when asked for (else the head size's default). */
  flashKeyPass?: KeyPass;
  /** Micro-batches per step. */
  gradAccum: number;
  /** The Gpu's buffer limits, the binding limit lowered by `maxBindingBytes`. */
  limits: BufferLimits;
  /** The AdamW hyper-parameters. */
  optimizer: AdamwOptions;
  /** How the matmuls read their inputs. */
  precision: Precision;
}

/**
 * Checks `options` against `gpu` and applies the defaults; a bad value is a
 * RangeError naming it (`Invalid batch: 0 (expected a positive integer)`).
 *
 * @example
 * ```ts ignore
 * const { batch, attention } = resolveModelOptions(gpu, { batch: 4 });
 * ```
 */
export function resolveModelOptions(gpu: Gpu, options: ModelOptions): ResolvedModelOptions {
  const batch = options.batch ?? 1;
  if (!Number.isInteger(batch) || batch < 1) {
    throw new RangeError(`Invalid batch: ${batch} (expected a positive integer)`);
  }
  const attention = options.attention ?? (gpu.isCpu ? "blocked" : "flash");
  if (attention !== "blocked" && attention !== "flash") {
    throw new RangeError(
      `Invalid attention: ${String(attention)} (expected "blocked" or "flash")`,
    );
  }
  const flashKeyPass = options.flashKeyPass;
  if (flashKeyPass !== undefined && flashKeyPass !== "fused" && flashKeyPass !== "split") {
    throw new RangeError(
      `Invalid flashKeyPass: ${String(flashKeyPass)} (expected "fused" or "split")`,
    );
  }
  const gradAccum = options.gradAccum ?? 1;
  if (!Number.isInteger(gradAccum) || gradAccum < 1 || gradAccum > 65536) {
    throw new RangeError(`Invalid gradAccum: ${gradAccum} (expected an integer in [1, 65536])`);
  }
  const limits = { ...gpu.limits };
  if (options.maxBindingBytes !== undefined) {
    const max = options.maxBindingBytes;
    if (!Number.isSafeInteger(max) || max < 1 || max > limits.maxBindingBytes) {
      throw new RangeError(
        `Invalid maxBindingBytes: ${max} (expected an integer in [1, ${limits.maxBindingBytes}])`,
      );
    }
    limits.maxBindingBytes = max;
  }
  const optimizer = {
    weightDecay: options.weightDecay ?? 0.1,
    beta1: options.beta1 ?? 0.9,
    beta2: options.beta2 ?? 0.95,
    eps: options.eps ?? 1e-8,
    maxGradNorm: options.maxGradNorm ?? 1,
  };
  const precision = resolvePrecision(gpu, options.precision);
  return { batch, attention, flashKeyPass, gradAccum, limits, optimizer, precision };
}

/**
 * The precision a model on `gpu` uses when asked for `asked` (undefined: the
 * default); "f16" on a device without `shader-f16` is an Error naming it.
 *
 * @example
 * ```ts ignore
 * resolvePrecision(gpu, undefined); // "f32": f16 only when asked for
 * ```
 */
export function resolvePrecision(
  gpu: Pick<Gpu, "isCpu" | "hasF16" | "adapter">,
  asked: Precision | undefined,
): Precision {
  if (asked === undefined) return "f32";
  if (asked !== "f32" && asked !== "f16") {
    throw new RangeError(`Invalid precision: ${String(asked)} (expected "f32" or "f16")`);
  }
  if (asked === "f16" && !gpu.hasF16) {
    throw new Error(
      `Cannot use precision f16: the device lacks the shader-f16 feature (adapter ` +
        `${gpu.adapter.description}, backend ${gpu.adapter.backend}); use precision f32`,
    );
  }
  return asked;
}
