/**
 * Matmul tuning: which variant of kernels/matmul.ts runs a shape fastest,
 * measured on the device at hand rather than guessed; and, the same way,
 * whether flash attention's backward runs its key pass fused or split
 * (kernels/flash_attention.ts, {@linkcode attentionKey}).
 *
 * The GPU choice of {@linkcode defaultVariant} is a rule of thumb sized for a
 * 132-SM data-centre GPU (how many 128×128 or 64×64 tiles a shape makes, when
 * to split k). The people who join a run bring anything from a laptop GPU
 * with 8 compute units to that data-centre card, and WebGPU does not say how
 * many units an adapter has. A {@linkcode MatmulTuner} times each candidate
 * variant on the device for each shape a model uses and keeps the fastest:
 * the tile sizes, and split-K with 2 to 16 splits where k is long
 * ({@linkcode tuneCandidates}). Its table can be saved and loaded
 * ({@linkcode MatmulTuner.toJSON}, {@linkcode MatmulTuner.fromJSON};
 * kernels/matmul_tune_file.ts keeps it in a file), so a machine measures once.
 *
 * What a choice changes: the unsplit `tile` variants sum every output in k
 * order, so they give the same bits as each other; split-K sums S slices in
 * split order, so a different S gives results that differ by rounding. A
 * model's numbers then depend on the table, which is why the table is kept and
 * reused rather than measured anew each run (timings vary a little between
 * runs). The distributed run does not need trainers to agree on these bits:
 * updates are applied on the CPU (README, "The kernels").
 *
 * A shape is tuned as a plain product (no bias, residual or epilogue, which
 * every variant applies alike at its store) and keyed by its sizes, its
 * transposes and how each operand is stored ({@linkcode tuneKey}).
 *
 * The key pass is a register question: fused, each invocation holds 4 head
 * rows (256 floats at head size 64, over an NVIDIA thread's 255 registers);
 * split, at most 3, for a sixth more FLOPs. Whether spilling or the extra
 * work costs more depends on the GPU's register file and compiler, so it is
 * measured like a matmul variant: the backward alone, at the model's batch
 * and shape, each way. Both ways give the same sums in the same order.
 *
 * @module
 */
import type { Dispatch, Gpu } from "./device.ts";
import {
  defaultKeyPass,
  flashAttentionBackward,
  type FlashAttentionShape,
  type KeyPass,
} from "./flash_attention.ts";
import {
  CPU_DEFAULT_VARIANT,
  CPU_NARROW_VARIANT,
  defaultVariant,
  matmul,
  type MatmulShape,
  variantFits,
} from "./matmul.ts";
import { halfWords } from "./half.ts";

/** What a tuning entry is keyed by: the sizes, transposes and storage of a matmul. */
export type TuneShape = Pick<
  MatmulShape,
  "m" | "n" | "k" | "transA" | "transB" | "aType" | "bType" | "cType"
>;

/** One shape's measurement: every candidate's time and the choice. */
export interface TuneResult {
  /** {@linkcode tuneKey} of the shape (or {@linkcode attentionKey} of an attention shape). */
  key: string;
  /** The fastest candidate. */
  variant: string;
  /** Its milliseconds per matmul. */
  ms: number;
  /** What {@linkcode defaultVariant} picks for the shape. */
  heuristic: string;
  /** The heuristic's milliseconds per matmul (measured beside the others). */
  heuristicMs: number;
  /** Every candidate tried, with its milliseconds per matmul, in the order tried. */
  tried: { variant: string; ms: number }[];
}

/** Options of {@linkcode MatmulTuner}. */
export interface TunerOptions {
  /**
   * The variants to time for a shape (default {@linkcode tuneCandidates});
   * those that do not fit the device are dropped, the heuristic's choice is
   * always timed.
   */
  candidates?: (gpu: Gpu, shape: TuneShape) => string[];
  /** Time each candidate until at least this many milliseconds of work per sample (default 10). */
  sampleMs?: number;
  /** Samples per candidate, the fastest kept (default 3). */
  samples?: number;
  /** Told each result as it is measured (for progress lines). */
  onResult?: (result: TuneResult) => void;
}

/**
 * The key of a shape's entry: layout, sizes and f16 operands, e.g.
 * `NT 4096x2304x768` or `TN 768x3072x4096 f16a f16b`.
 *
 * @example
 * ```ts
 * import { tuneKey } from "./matmul_tune.ts";
 * console.log(tuneKey({ m: 4096, n: 2304, k: 768, transB: true })); // "NT 4096x2304x768"
 * ```
 */
export function tuneKey(shape: TuneShape): string {
  const layout = `${shape.transA ? "T" : "N"}${shape.transB ? "T" : "N"}`;
  const f16 = [
    shape.aType === "f16" ? " f16a" : "",
    shape.bType === "f16" ? " f16b" : "",
    shape.cType === "f16" ? " f16c" : "",
  ].join("");
  return `${layout} ${shape.m}x${shape.n}x${shape.k}${f16}`;
}

/**
 * The key of an attention shape's entry, whose choice is flash attention's
 * key pass ("fused" or "split"): `flash b×t×c×nh`, e.g. `flash 16x256x768x12`.
 *
 * @example
 * ```ts
 * import { attentionKey } from "./matmul_tune.ts";
 * console.log(attentionKey({ b: 16, t: 256, c: 768, nh: 12 })); // "flash 16x256x768x12"
 * ```
 */
export function attentionKey(shape: FlashAttentionShape): string {
  return `flash ${shape.b}x${shape.t}x${shape.c}x${shape.nh}`;
}

const KEY_PASSES: readonly KeyPass[] = ["fused", "split"];

/** Split counts tried for split-K: each slice keeps at least 128 of k. */
const SPLITS = [2, 4, 8, 16];

/**
 * The variants worth timing for `shape` on `gpu`, the heuristic's choice
 * first: on GPUs (and for f16 operands anywhere, which only the tile variants
 * take) every tile size, `tile64` split 2 to 16 ways where each split keeps at
 * least 128 of k, and `tile128x64` split 2 or 4 ways where k is 1024 or more;
 * with f32 on CPU adapters the two register-blocked defaults. Variants that
 * do not fit the device are left out.
 *
 * @example
 * ```ts ignore
 * tuneCandidates(gpu, { m: 768, n: 768, k: 4096, transA: true });
 * // on a GPU: ["tile64s9", "tile128", "tile128x64", "tile64x128", "tile64", "tile64s2", ...]
 * ```
 */
export function tuneCandidates(gpu: Gpu, shape: TuneShape): string[] {
  const heuristic = defaultVariant(gpu, shape);
  const f16 = shape.aType === "f16" || shape.bType === "f16" || shape.cType === "f16";
  const list = [heuristic];
  if (gpu.isCpu && !f16) {
    list.push(CPU_DEFAULT_VARIANT, CPU_NARROW_VARIANT);
  } else {
    list.push("tile128", "tile128x64", "tile64x128", "tile64");
    for (const s of SPLITS) if (shape.k >= 128 * s) list.push(`tile64s${s}`);
    for (const s of [2, 4]) if (shape.k >= 512 * s) list.push(`tile128x64s${s}`);
  }
  return [...new Set(list)].filter((v) => variantFits(gpu, v, shape));
}

/**
 * Milliseconds per matmul of `variant` at `shape` on `gpu`: the fastest of
 * `samples` submits, each of as many copies of the dispatch as make at least
 * `sampleMs` of work, timed from submit to `onSubmittedWorkDone` less an
 * empty submit's time. The operands are scratch buffers of zeros, freed after.
 *
 * @example
 * ```ts ignore
 * const ms = await timeMatmul(gpu, { m: 1024, n: 1024, k: 1024 }, "tile128");
 * console.log(`${(2 * 1024 ** 3 / ms / 1e6).toFixed(0)} GFLOP/s`);
 * ```
 */
export async function timeMatmul(
  gpu: Gpu,
  shape: TuneShape,
  variant: string,
  options: TimingOptions = {},
): Promise<number> {
  const { m, n, k } = shape;
  const words = (count: number, type?: string) => (type === "f16" ? halfWords(count) : count);
  const scratch = new Scratch(gpu);
  const a = scratch.take(words(m * k, shape.aType), "tune_a");
  const b = scratch.take(words(k * n, shape.bType), "tune_b");
  const c = scratch.take(words(m * n, shape.cType), "tune_c");
  try {
    return await timeBuilt(
      gpu,
      `matmul ${variant} at ${tuneKey(shape)}`,
      () => [matmul(gpu, { a, b, c }, { ...shape, variant })],
      options,
    );
  } finally {
    scratch.free();
  }
}

/**
 * Milliseconds per flash-attention backward (query pass and key pass or
 * passes) at `shape` with `keyPass`, timed as {@linkcode timeMatmul} times a
 * matmul, on scratch buffers of zeros.
 *
 * @example
 * ```ts ignore
 * const ms = await timeAttentionBackward(gpu, { b: 16, t: 256, c: 768, nh: 12 }, "split");
 * ```
 */
export async function timeAttentionBackward(
  gpu: Gpu,
  shape: FlashAttentionShape,
  keyPass: KeyPass,
  options: TimingOptions = {},
): Promise<number> {
  const { b, t, c, nh } = shape;
  const scratch = new Scratch(gpu);
  const qkv = scratch.take(b * t * 3 * c, "tune_qkv");
  const dqkv = scratch.take(b * t * 3 * c, "tune_dqkv");
  const out = scratch.take(b * t * c, "tune_out");
  const dout = scratch.take(b * t * c, "tune_dout");
  const lse = scratch.take(b * nh * t, "tune_lse");
  const dsum = scratch.take(b * nh * t, "tune_dsum");
  try {
    return await timeBuilt(
      gpu,
      `the ${keyPass} key pass at ${attentionKey(shape)}`,
      () =>
        flashAttentionBackward(gpu, { dqkv, dout, qkv, out, lse, dsum }, shape, {
          accumulate: false,
          keyPass,
        }),
      options,
    );
  } finally {
    scratch.free();
  }
}

/** How long {@linkcode timeMatmul} and {@linkcode timeAttentionBackward} measure. */
export interface TimingOptions {
  /** Copies per submit until at least this many milliseconds of work (default 10). */
  sampleMs?: number;
  /** Submits, the fastest kept (default 3). */
  samples?: number;
}

/** Zeroed storage buffers for one timing, freed together. */
class Scratch {
  readonly #buffers: GPUBuffer[] = [];
  constructor(readonly gpu: Gpu) {}
  take(length: number, label: string) {
    const buffer = this.gpu.storage(length, label);
    this.#buffers.push(buffer);
    return { buffer, length };
  }
  free() {
    for (const b of this.#buffers) b.destroy();
  }
}

/**
 * Milliseconds per run of what `build` makes: the fastest of `samples`
 * submits of as many copies as make `sampleMs` of work, less an empty
 * submit, inside a validation error scope that is popped whatever happens.
 */
async function timeBuilt(
  gpu: Gpu,
  what: string,
  build: () => Dispatch[],
  options: TimingOptions,
): Promise<number> {
  const sampleMs = options.sampleMs ?? 10;
  const samples = options.samples ?? 3;
  const device = gpu.device;
  const submit = (copies: number, encode: (pass: GPUComputePassEncoder) => void) =>
    gpu.timedPass((pass) => {
      for (let i = 0; i < copies; i++) encode(pass);
    });
  device.pushErrorScope("validation");
  let best = Infinity;
  let ds: Dispatch[] = [];
  let failure: unknown;
  try {
    ds = build();
    const floor = Math.min(await submit(1, () => {}), await submit(1, () => {}));
    const once = (pass: GPUComputePassEncoder) => {
      for (const d of ds) d.encode(pass);
    };
    await submit(1, once); // first use: pipeline warm-up
    const first = Math.max(0.001, (await submit(1, once)) - floor);
    const copies = Math.max(1, Math.min(1000, Math.ceil(sampleMs / first)));
    for (let s = 0; s < samples; s++) {
      const ms = await submit(copies, once);
      // A sample no longer than the empty submit (a hiccup made the floor long) is below the
      // timer's resolution: its whole time stands in, so a time is never 0 (ratios stay finite).
      best = Math.min(best, (ms > floor ? ms - floor : ms) / copies);
    }
  } catch (e) {
    failure = e;
  } finally {
    for (const d of ds) d.release?.();
  }
  // The scope is popped whatever happened; an error thrown above is the one reported.
  const err = await device.popErrorScope();
  if (failure !== undefined) throw failure;
  if (err) throw new Error(`Cannot time ${what}: ${err.message}`);
  return best;
}

/** The JSON form of a tuner's table ({@linkcode MatmulTuner.toJSON}). */
export interface TunerTable {
  /** Format version: 1. */
  version: 1;
  /** Per adapter (its description and backend), the chosen variant per {@linkcode tuneKey}. */
  adapters: Record<string, Record<string, string>>;
}

/**
 * The name a table files a device's choices under: its adapter's description
 * and backend (a choice measured on one GPU says nothing of another).
 */
export function adapterKey(gpu: Gpu): string {
  return `${gpu.adapter.description} (${gpu.adapter.backend})`;
}

/**
 * Measures and remembers the fastest matmul variant per shape and device,
 * and flash attention's faster key pass per attention shape. Give one to
 * `createModel` (`ModelOptions.matmulTuner`): the model's shapes not in the
 * table yet are measured before its kernels are built, then every matmul of
 * the model (and its flash backward, unless `flashKeyPass` is given) uses the
 * table's choice.
 *
 * @example
 * ```ts ignore
 * const tuner = new MatmulTuner({ onResult: (r) => console.log(r.key, r.variant, r.ms) });
 * const model = await createModel(gpu, config, { batch: 16, matmulTuner: tuner });
 * await Deno.writeTextFile("tuning.json", JSON.stringify(tuner.toJSON()));
 * ```
 */
export class MatmulTuner {
  readonly #table = new Map<string, Map<string, string>>();
  readonly #results: TuneResult[] = [];
  readonly #options: TunerOptions;

  constructor(options: TunerOptions = {}) {
    const { sampleMs = 10, samples = 3 } = options;
    if (!(sampleMs > 0 && sampleMs <= 10_000)) {
      throw new RangeError(`Invalid tuner sampleMs: ${sampleMs} (expected 0 < sampleMs <= 10000)`);
    }
    if (!Number.isInteger(samples) || samples < 1 || samples > 100) {
      throw new RangeError(`Invalid tuner samples: ${samples} (expected an integer in 1..100)`);
    }
    this.#options = options;
  }

  /** The table's choice for `shape` on `gpu`, or undefined when it has none. */
  variantFor(gpu: Gpu, shape: TuneShape): string | undefined {
    return this.#table.get(adapterKey(gpu))?.get(tuneKey(shape));
  }

  /** The table's flash-attention key pass for `shape` on `gpu`, or undefined when it has none. */
  keyPassFor(gpu: Gpu, shape: FlashAttentionShape): KeyPass | undefined {
    const known = this.#table.get(adapterKey(gpu))?.get(attentionKey(shape));
    return KEY_PASSES.find((k) => k === known);
  }

  /**
   * Measures flash attention's backward at `shape` on `gpu` with each key
   * pass, unless the table has a choice for it, and records the faster
   * (within 2%, {@linkcode defaultKeyPass} of the head size); returns the new
   * result, or undefined when none was needed.
   */
  async tuneAttention(gpu: Gpu, shape: FlashAttentionShape): Promise<TuneResult | undefined> {
    if (this.keyPassFor(gpu, shape) !== undefined) return undefined;
    const key = attentionKey(shape);
    const { b, t, c, nh } = shape;
    const heuristic = defaultKeyPass(c / nh);
    const result = await this.#pick(
      key,
      heuristic,
      KEY_PASSES,
      (keyPass) => timeAttentionBackward(gpu, { b, t, c, nh }, keyPass as KeyPass, this.#timing()),
    );
    this.#record(gpu, result);
    return result;
  }

  /**
   * Measures every shape of `shapes` the table has no choice for on `gpu`
   * (each distinct key once), or a choice that cannot run there (an edited or
   * foreign table), and records the fastest candidate; returns the new results.
   */
  async tune(gpu: Gpu, shapes: TuneShape[]): Promise<TuneResult[]> {
    const fresh: TuneResult[] = [];
    for (const full of shapes) {
      const key = tuneKey(full);
      const known = this.variantFor(gpu, full);
      if (known !== undefined && variantFits(gpu, known, full)) continue;
      // The plain product: a model's shapes also carry their epilogues and extra buffers.
      const { m, n, k, transA, transB, aType, bType, cType } = full;
      const shape = { m, n, k, transA, transB, aType, bType, cType };
      const result = await this.#measure(gpu, shape, key);
      this.#record(gpu, result);
      fresh.push(result);
    }
    return fresh;
  }

  #record(gpu: Gpu, result: TuneResult) {
    const adapter = adapterKey(gpu);
    const table = this.#table.get(adapter) ?? new Map<string, string>();
    this.#table.set(adapter, table);
    table.set(result.key, result.variant);
    this.#results.push(result);
    this.#options.onResult?.(result);
  }

  #timing(): TimingOptions {
    return { sampleMs: this.#options.sampleMs, samples: this.#options.samples };
  }

  /** Every shape measured by this tuner (not those loaded with {@linkcode fromJSON}). */
  results(): TuneResult[] {
    return [...this.#results];
  }

  /** The table as JSON: per adapter, the chosen variant per shape key. */
  toJSON(): TunerTable {
    const adapters: Record<string, Record<string, string>> = {};
    for (const [adapter, table] of this.#table) adapters[adapter] = Object.fromEntries(table);
    return { version: 1, adapters };
  }

  /**
   * A tuner holding the table `json` (from {@linkcode toJSON}); throws a
   * TypeError naming the first thing that is not a table. Entries are not
   * trusted to fit a device: a choice that does not fit is measured again.
   */
  static fromJSON(json: unknown, options: TunerOptions = {}): MatmulTuner {
    const bad = (what: string) => new TypeError(`Invalid matmul tuning table: ${what}`);
    if (typeof json !== "object" || json === null || Array.isArray(json)) {
      throw bad("expected an object");
    }
    const { version, adapters } = json as Record<string, unknown>;
    if (version !== 1) throw bad(`version ${JSON.stringify(version)} (expected 1)`);
    if (typeof adapters !== "object" || adapters === null || Array.isArray(adapters)) {
      throw bad("adapters is not an object");
    }
    const tuner = new MatmulTuner(options);
    for (const [adapter, entries] of Object.entries(adapters)) {
      if (typeof entries !== "object" || entries === null || Array.isArray(entries)) {
        throw bad(`adapters[${JSON.stringify(adapter)}] is not an object`);
      }
      const table = new Map<string, string>();
      for (const [key, variant] of Object.entries(entries)) {
        if (typeof variant !== "string" || !/^[a-z0-9]+$/.test(variant)) {
          throw bad(
            `adapters[${JSON.stringify(adapter)}][${JSON.stringify(key)}] is not a variant name`,
          );
        }
        table.set(key, variant);
      }
      tuner.#table.set(adapter, table);
    }
    return tuner;
  }

  async #measure(gpu: Gpu, shape: TuneShape, key: string): Promise<TuneResult> {
    const heuristic = defaultVariant(gpu, shape);
    const asked = this.#options.candidates?.(gpu, shape) ?? tuneCandidates(gpu, shape);
    const candidates = [...new Set([heuristic, ...asked])].filter((v) =>
      variantFits(gpu, v, shape)
    );
    return await this.#pick(
      key,
      heuristic,
      candidates,
      (variant) => timeMatmul(gpu, shape, variant, this.#timing()),
    );
  }

  /** Times every candidate with `time` and picks one (see the ties rule below). */
  async #pick(
    key: string,
    heuristic: string,
    candidates: readonly string[],
    time: (variant: string) => Promise<number>,
  ): Promise<TuneResult> {
    const tried: { variant: string; ms: number }[] = [];
    for (const variant of candidates) {
      // A candidate that fails to run is not chosen; the heuristic failing is the model's
      // own error, met again when it is built.
      const ms = await time(variant).catch(() => Infinity);
      tried.push({ variant, ms });
    }
    // Ties (within 2%) go to the heuristic, then to the earlier candidate: a choice should
    // move only for a difference the measurement can see.
    const heuristicMs = tried.find((t) => t.variant === heuristic)?.ms ?? Infinity;
    let best = { variant: heuristic, ms: heuristicMs };
    for (const t of tried) if (t.ms < best.ms * 0.98) best = t;
    return { key, variant: best.variant, ms: best.ms, heuristic, heuristicMs, tried };
  }
}
