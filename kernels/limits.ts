/**
 * What a model shape needs of WebGPU's buffer limits, checked before anything
 * is allocated. WebGPU caps one binding at `maxStorageBufferBindingSize`
 * (128 MiB on llvmpipe, 2 GiB on an H200) and one buffer at `maxBufferSize`.
 *
 * - Every parameter tensor and every activation is bound whole by some
 *   kernel, so each must fit one binding.
 * - The whole vectors (parameters, gradients, AdamW m and v, and the
 *   distributed run's θ_r and Δ) are one buffer each, so each must fit
 *   `maxBufferSize`; kernels over a whole vector (gradient norm, AdamW, the
 *   outer kernels) bind it in chunks of at most one binding
 *   ({@linkcode bindingChunk}).
 *
 * A shape that does not fit is refused with a RangeError that names the
 * limit, the tensor, and the largest batch or shape field that fits.
 *
 * @module
 */
import type { GptConfig } from "./config.ts";
import { describeConfig } from "./config.ts";
import { VIEW_ALIGN } from "./layout.ts";

/**
 * Whole-vector kernels are cut at multiples of this many floats (64 KiB):
 * a multiple of the gradient norm's segment and of 64 int8 quantization
 * blocks of 256, so that each chunk's int8 words and scales start 256-byte
 * aligned, as WebGPU requires of a binding's offset.
 */
export const CHUNK_ALIGN = 16384;

/** The two buffer limits that bound a model's shape, in bytes. */
export interface BufferLimits {
  /** Largest storage binding (`maxStorageBufferBindingSize`, or a smaller override). */
  maxBindingBytes: number;
  /** Largest buffer (`maxBufferSize`). */
  maxBufferBytes: number;
}

/**
 * Checks an override of the binding limit: at least one chunk
 * ({@linkcode CHUNK_ALIGN} floats, 64 KiB) and at most what the device allows.
 */
export function checkBindingOverride(bytes: number, deviceMax: number): number {
  if (!Number.isSafeInteger(bytes) || bytes < CHUNK_ALIGN * 4 || bytes > deviceMax) {
    throw new RangeError(
      `Invalid maxBindingBytes: ${bytes} (expected an integer in [${
        CHUNK_ALIGN * 4
      }, ${deviceMax}],` +
        " the device's maxStorageBufferBindingSize)",
    );
  }
  return bytes;
}

/**
 * Floats per chunk of a whole-vector kernel under a binding limit: the most
 * that fit one binding, rounded down to {@linkcode CHUNK_ALIGN}.
 *
 * @example
 * ```ts
 * import { bindingChunk } from "./limits.ts";
 * console.log(bindingChunk(1 << 20)); // 262144
 * ```
 */
export function bindingChunk(maxBindingBytes: number): number {
  const chunk = Math.floor(maxBindingBytes / 4 / CHUNK_ALIGN) * CHUNK_ALIGN;
  if (chunk < CHUNK_ALIGN) {
    throw new RangeError(
      `Cannot cut vectors into bindings: a binding of ${maxBindingBytes} bytes holds less than ` +
        `one chunk of ${CHUNK_ALIGN} floats`,
    );
  }
  return chunk;
}

/** How a model of some shape fits the limits. */
export interface ModelPlan {
  /** Floats per chunk of the whole-vector kernels. */
  chunk: number;
  /** Chunks of each whole vector (1 when a vector fits one binding). */
  chunks: number;
  /** Length of each whole vector in floats (the layout's padded length). */
  vectorLength: number;
  /** Bytes of the largest single binding the model makes. */
  largestBinding: number;
  /**
   * Bytes of the f16 copies that f16 matmul inputs add (0 in f32): each
   * matmul weight, and per micro-batch each activation a matmul reads (ln1,
   * atty, ln2, the GELU output, lnf), at 2 bytes an element, each buffer
   * rounded up to whole 4-byte words.
   */
  halfBytes: number;
}

/** Options of {@linkcode planModel}. */
export interface PlanOptions {
  /** Sequences per micro-batch. */
  batch: number;
  /** Micro-batches per step (default 1): the step's tokens are staged on the GPU. */
  gradAccum?: number;
  /** Whether the attention keeps [B, NH, T, T] scratch (the CPU adapters' kernels do). */
  attentionScratch?: boolean;
  /** How the matmuls read their inputs (default "f32"); "f16" adds f16 copies. */
  precision?: "f32" | "f16";
}

interface Need {
  what: string;
  shape: number[];
  /** The field whose largest fitting value the refusal names. */
  hint: "batch" | "blockSize" | "nEmbd" | "nLayer";
  limit: "binding" | "buffer";
}

const HINT_NAMES = {
  batch: "batch",
  blockSize: "block size",
  nEmbd: "n_embd",
  nLayer: "n_layer",
} as const;

/** The padded length of the flat vector, without building the layout. */
function vectorLength(c: GptConfig): number {
  const a = (n: number) => Math.ceil(n / VIEW_ALIGN) * VIEW_ALIGN;
  const C = c.nEmbd;
  const perLayer2d = a(3 * C * C) + a(C * C) + a(4 * C * C) + a(4 * C * C);
  const perLayer1d = 4 * a(C) + a(3 * C) + a(C) + a(4 * C) + a(C);
  return a(c.vocabSize * C) + a(c.blockSize * C) + c.nLayer * (perLayer2d + perLayer1d) +
    2 * a(C);
}

function needs(c: GptConfig, o: Required<PlanOptions>): Need[] {
  const { nHead: NH, nEmbd: C, blockSize: T, vocabSize: V } = c;
  const B = o.batch;
  const N = B * T;
  const list: Need[] = [
    { what: "tensor wte.weight", shape: [V, C], hint: "nEmbd", limit: "binding" },
    { what: "tensor wpe.weight", shape: [T, C], hint: "blockSize", limit: "binding" },
    { what: "tensor h.0.attn.c_attn.weight", shape: [C, 3 * C], hint: "nEmbd", limit: "binding" },
    { what: "tensor h.0.mlp.c_fc.weight", shape: [C, 4 * C], hint: "nEmbd", limit: "binding" },
    { what: "activation qkv", shape: [B, T, 3 * C], hint: "batch", limit: "binding" },
    { what: "activation fch", shape: [B, T, 4 * C], hint: "batch", limit: "binding" },
    { what: "activation logits", shape: [B, T, V], hint: "batch", limit: "binding" },
    { what: "staged tokens", shape: [o.gradAccum, N], hint: "batch", limit: "binding" },
  ];
  if (o.attentionScratch) {
    list.push({
      what: "activation att (the CPU attention's T·T scratch)",
      shape: [B, NH, T, T],
      hint: "batch",
      limit: "binding",
    });
  }
  list.push({
    what: "the flat parameter vector (params, grads, AdamW m and v: one buffer each)",
    shape: [vectorLength(c)],
    hint: "nLayer",
    limit: "buffer",
  });
  return list;
}

/** Bytes of the f16 copies of `precision: "f16"` (see {@linkcode ModelPlan.halfBytes}). */
function halfBytes(c: GptConfig, o: Required<PlanOptions>): number {
  if (o.precision === "f32") return 0;
  const half = (n: number) => Math.ceil(n / 2) * 4;
  const C = c.nEmbd;
  const N = o.batch * c.blockSize;
  const weights = half(c.vocabSize * C) +
    c.nLayer * (half(3 * C * C) + half(C * C) + half(4 * C * C) + half(4 * C * C));
  const acts = c.nLayer * (3 * half(N * C) + half(N * 4 * C)) + half(N * C);
  return weights + acts;
}

function bytesOf(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 4);
}

function mib(bytes: number): string {
  return bytes >= 2 ** 30
    ? `${(bytes / 2 ** 30).toFixed(2)} GiB`
    : `${(bytes / 2 ** 20).toFixed(bytes < 2 ** 24 ? 2 : 0)} MiB`;
}

/** The largest value of `hint` (others fixed) for which need `index` fits, or 0. */
function largestFit(
  c: GptConfig,
  o: Required<PlanOptions>,
  index: number,
  hint: Need["hint"],
  cap: number,
): number {
  const fits = (v: number) => {
    const cc = { ...c };
    const oo = { ...o };
    if (hint === "batch") oo.batch = v;
    else cc[hint] = hint === "nEmbd" ? v * c.nHead : v;
    return bytesOf(needs(cc, oo)[index].shape) <= cap;
  };
  const current = hint === "batch" ? o.batch : hint === "nEmbd" ? c.nEmbd / c.nHead : c[hint];
  let lo = 0;
  let hi = current;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return hint === "nEmbd" ? lo * c.nHead : lo;
}

/**
 * Checks that a model of shape `config` fits `limits` and says how its
 * whole-vector kernels are cut; allocates nothing.
 *
 * @example
 * ```ts
 * import { planModel } from "./limits.ts";
 * import { throws } from "@std/assert";
 * const limits = { maxBindingBytes: 128 * 2 ** 20, maxBufferBytes: 2 ** 31 - 1 };
 * const gpt2 = { nLayer: 12, nHead: 12, nEmbd: 768, blockSize: 1024, vocabSize: 256 };
 * console.log(planModel(gpt2, { batch: 2 }, limits).chunks); // 3
 * throws(() => planModel(gpt2, { batch: 16, attentionScratch: true }, limits), /largest batch that fits is 2/);
 * ```
 *
 * @throws {RangeError} naming the limit, the tensor and the largest batch or field that fits
 */
export function planModel(
  config: GptConfig,
  options: PlanOptions,
  limits: BufferLimits,
): ModelPlan {
  const o: Required<PlanOptions> = {
    batch: options.batch,
    gradAccum: options.gradAccum ?? 1,
    attentionScratch: options.attentionScratch ?? false,
    precision: options.precision ?? "f32",
  };
  const list = needs(config, o);
  const capOf = (n: Need) => n.limit === "binding" ? limits.maxBindingBytes : limits.maxBufferBytes;
  const largest = Math.max(
    ...list.filter((n) => n.limit === "binding").map((n) => bytesOf(n.shape)),
  );
  // The need most over its limit is named; the largest batch named is one at which every
  // activation fits.
  let worst = -1;
  for (let i = 0; i < list.length; i++) {
    const over = bytesOf(list[i].shape) / capOf(list[i]);
    if (over > 1 && (worst < 0 || over > bytesOf(list[worst].shape) / capOf(list[worst]))) {
      worst = i;
    }
  }
  if (worst >= 0) {
    const n = list[worst];
    const bytes = bytesOf(n.shape);
    const cap = capOf(n);
    const limitName = n.limit === "binding"
      ? `the ${mib(cap)} binding limit (maxStorageBufferBindingSize)`
      : `the ${mib(cap)} buffer limit (maxBufferSize)`;
    let hint = n.hint;
    let best = largestFit(config, o, worst, hint, cap);
    if (hint === "batch") {
      list.forEach((m, j) => {
        if (m.hint === "batch") best = Math.min(best, largestFit(config, o, j, "batch", capOf(m)));
      });
    }
    if (best === 0 && hint === "batch") {
      hint = "blockSize";
      best = largestFit(config, { ...o, batch: 1 }, worst, hint, cap);
    } else if (best === 0 && hint === "nLayer") {
      hint = "nEmbd";
      best = largestFit({ ...config, nLayer: 1 }, o, worst, hint, cap);
    }
    const fit = best > 0
      ? `; the largest ${HINT_NAMES[hint]} that fits is ${best}${
        hint === "blockSize" && n.hint === "batch" ? " at batch 1" : ""
      }`
      : "";
    throw new RangeError(
      `Cannot build model ${describeConfig(config)} at batch ${o.batch}: ${n.what} [${
        n.shape.join(", ")
      }] needs ${mib(bytes)}, more than ${limitName}${fit}`,
    );
  }
  const chunk = bindingChunk(limits.maxBindingBytes);
  const length = vectorLength(config);
  return {
    chunk,
    chunks: Math.ceil(length / chunk),
    vectorLength: length,
    largestBinding: largest,
    halfBytes: halfBytes(config, o),
  };
}
