/**
 * The flat parameter layout: every parameter tensor of the model is a named
 * view into ONE flat f32 vector (and the gradient, AdamW moments and the
 * distributed run's buffers share the same layout). Each view starts at a
 * 256-byte (64-float) aligned offset so it can be bound on its own; the gaps
 * between views are padding that always holds zeros.
 *
 * Names and shapes are Hugging Face GPT-2's (`wte.weight` [V,C], `h.0.attn.c_attn.weight`
 * [C,3C], ...); linear weights are stored [in, out] as in HF's Conv1D.
 *
 * Order: the tensors that get weight decay (the embeddings and the linear
 * weights, i.e. every 2-D tensor) come first, then the 1-D ones (biases and
 * LayerNorm parameters), so the optimizer needs two contiguous regions only.
 * Within each region the order is wte, wpe, then layer by layer, then ln_f.
 *
 * @module
 */
import { type GptConfig, validateConfig } from "./config.ts";

/** Alignment of every view, in floats (256 bytes). */
export const VIEW_ALIGN = 64;

/** One named parameter tensor inside the flat vector. */
export interface ParamView {
  /** Hugging Face GPT-2 name, e.g. `h.0.mlp.c_fc.weight`. */
  name: string;
  /** Row-major shape. */
  shape: number[];
  /** Offset in floats into the flat vector (a multiple of {@linkcode VIEW_ALIGN}). */
  offset: number;
  /** Number of elements (product of shape). */
  length: number;
  /** Whether AdamW applies weight decay to this tensor (2-D tensors only). */
  decay: boolean;
}

/** The views of one transformer block. */
export interface BlockViews {
  ln1w: ParamView;
  ln1b: ParamView;
  qkvw: ParamView;
  qkvb: ParamView;
  attprojw: ParamView;
  attprojb: ParamView;
  ln2w: ParamView;
  ln2b: ParamView;
  fcw: ParamView;
  fcb: ParamView;
  fcprojw: ParamView;
  fcprojb: ParamView;
}

/** The whole flat layout. */
export interface ParamLayout {
  /** The model shape the layout was made for. */
  config: GptConfig;
  /** All views in flat order. */
  views: ParamView[];
  /** Views by Hugging Face name. */
  byName: Map<string, ParamView>;
  /** Token embedding [V, C] (also the tied output head). */
  wte: ParamView;
  /** Position embedding [T, C]. */
  wpe: ParamView;
  /** Per-block views. */
  blocks: BlockViews[];
  /** Final LayerNorm weight [C]. */
  lnfw: ParamView;
  /** Final LayerNorm bias [C]. */
  lnfb: ParamView;
  /** Number of real parameters (padding excluded). */
  paramCount: number;
  /** Length of the flat vector in floats (padding included). */
  totalLength: number;
  /** The weight-decayed region [start, end) in floats (2-D tensors). */
  decayRegion: { offset: number; length: number };
  /** The region without weight decay [start, end) in floats (1-D tensors). */
  noDecayRegion: { offset: number; length: number };
}

function align(n: number): number {
  return Math.ceil(n / VIEW_ALIGN) * VIEW_ALIGN;
}

/**
 * Builds the flat layout for a model shape.
 *
 * @example
 * ```ts
 * import { buildLayout } from "./layout.ts";
 * const layout = buildLayout({ nLayer: 2, nHead: 4, nEmbd: 64, blockSize: 64, vocabSize: 256 });
 * console.log(layout.byName.get("h.0.attn.c_attn.weight")?.shape); // [64, 192]
 * ```
 */
export function buildLayout(config: GptConfig): ParamLayout {
  validateConfig(config);
  const { nLayer: L, nEmbd: C, blockSize: T, vocabSize: V } = config;
  const views: ParamView[] = [];
  let cursor = 0;
  const add = (name: string, shape: number[]): ParamView => {
    const length = shape.reduce((a, b) => a * b, 1);
    const view = { name, shape, offset: cursor, length, decay: shape.length >= 2 };
    views.push(view);
    cursor = align(cursor + length);
    return view;
  };
  const wte = add("wte.weight", [V, C]);
  const wpe = add("wpe.weight", [T, C]);
  const mats = [];
  for (let l = 0; l < L; l++) {
    const p = `h.${l}.`;
    mats.push({
      qkvw: add(`${p}attn.c_attn.weight`, [C, 3 * C]),
      attprojw: add(`${p}attn.c_proj.weight`, [C, C]),
      fcw: add(`${p}mlp.c_fc.weight`, [C, 4 * C]),
      fcprojw: add(`${p}mlp.c_proj.weight`, [4 * C, C]),
    });
  }
  const decayEnd = cursor;
  const blocks: BlockViews[] = [];
  for (let l = 0; l < L; l++) {
    const p = `h.${l}.`;
    blocks.push({
      ...mats[l],
      ln1w: add(`${p}ln_1.weight`, [C]),
      ln1b: add(`${p}ln_1.bias`, [C]),
      qkvb: add(`${p}attn.c_attn.bias`, [3 * C]),
      attprojb: add(`${p}attn.c_proj.bias`, [C]),
      ln2w: add(`${p}ln_2.weight`, [C]),
      ln2b: add(`${p}ln_2.bias`, [C]),
      fcb: add(`${p}mlp.c_fc.bias`, [4 * C]),
      fcprojb: add(`${p}mlp.c_proj.bias`, [C]),
    });
  }
  const lnfw = add("ln_f.weight", [C]);
  const lnfb = add("ln_f.bias", [C]);
  const byName = new Map(views.map((v) => [v.name, v]));
  return {
    config,
    views,
    byName,
    wte,
    wpe,
    blocks,
    lnfw,
    lnfb,
    paramCount: views.reduce((s, v) => s + v.length, 0),
    totalLength: cursor,
    decayRegion: { offset: 0, length: decayEnd },
    noDecayRegion: { offset: decayEnd, length: cursor - decayEnd },
  };
}

/** The real parameter count of a model shape (padding excluded). */
export function countParams(config: GptConfig): number {
  const { nLayer: L, nEmbd: C, blockSize: T, vocabSize: V } = config;
  return V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C;
}

/**
 * The elements of `view` in `flat`, as a subarray (no copy).
 *
 * @example
 * ```ts
 * import { buildLayout, viewOf } from "./layout.ts";
 * const layout = buildLayout({ nLayer: 1, nHead: 1, nEmbd: 4, blockSize: 2, vocabSize: 3 });
 * const flat = new Float32Array(layout.totalLength);
 * viewOf(flat, layout.wte).fill(1);
 * ```
 */
export function viewOf<A extends Float32Array | Float64Array>(flat: A, view: ParamView): A {
  return flat.subarray(view.offset, view.offset + view.length) as A;
}

/**
 * The parameters that some matmul reads: the tied wte (the logits) and each
 * block's four weights. With f16 matmul inputs these get f16 copies.
 *
 * @example
 * ```ts
 * import { buildLayout, matmulWeights } from "./layout.ts";
 * import { getConfig } from "./config.ts";
 * const layout = buildLayout(getConfig("tiny").model);
 * console.log(matmulWeights(layout).map((v) => v.name)[1]); // h.0.attn.c_attn.weight
 * ```
 */
export function matmulWeights(layout: ParamLayout): ParamView[] {
  return [
    layout.wte,
    ...layout.blocks.flatMap((w) => [w.qkvw, w.attprojw, w.fcw, w.fcprojw]),
  ];
}
