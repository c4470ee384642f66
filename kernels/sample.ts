/**
 * Text from a model: autoregressive sampling on the WebGPU engine. Each new
 * token costs one forward pass of the training kernels over the last
 * `blockSize` tokens ({@linkcode GptModel.forwardLogits}), whose logits at the
 * last position are turned into a token by a {@linkcode Sampler}: greedy at
 * temperature 0, otherwise a draw from softmax(logits / temperature) over
 * the top-k tokens, from a seeded RNG, so the same seed gives the same text.
 *
 * There is no KV cache: at the model sizes trained here a full forward over
 * at most T tokens per new token is cheap next to the ~10 ms readback floor
 * of every token on CPU adapters (README.md, "Text from a checkpoint").
 *
 * @module
 */
import type { GptModel } from "./model.ts";
import type { Tokens } from "./tokens.ts";
import { u32Rng } from "./init.ts";

/** How a {@linkcode Sampler} turns logits into a token. */
export interface SamplerOptions {
  /** Softmax temperature (default 1); 0 takes the most likely token (greedy). */
  temperature?: number;
  /** Draw from the k most likely tokens only (default 0: from all). */
  topK?: number;
  /** Seed of the sampling RNG (default 0). */
  seed?: number;
}

/** Options of {@linkcode generate}. */
export interface GenerateOptions extends SamplerOptions {
  /** How many tokens to generate (at least 1). */
  tokens: number;
  /** Sees each token as soon as it is drawn (to print text as it comes). */
  onToken?: (token: number) => void;
}

/** What {@linkcode generate} made. */
export interface Generation {
  /** The generated tokens, the prompt not included. */
  tokens: Uint32Array;
  /** Wall time of the generation in seconds. */
  seconds: number;
}

/**
 * Picks a token from `logits`: the first largest at temperature 0, otherwise
 * the token at `u` ∈ [0, 1) in the cumulative softmax(logits / temperature)
 * over the `topK` largest logits (all when `topK` is 0 or ≥ the vocabulary;
 * ties kept in token order).
 *
 * @example
 * ```ts
 * import { pickToken } from "./sample.ts";
 * const logits = new Float32Array([0, 3, 1]);
 * console.log(pickToken(logits, { temperature: 0, topK: 0 }, 0.5)); // 1
 * console.log(pickToken(logits, { temperature: 1, topK: 1 }, 0.99)); // 1
 * ```
 */
export function pickToken(
  logits: Float32Array,
  options: { temperature: number; topK: number },
  u: number,
): number {
  const V = logits.length;
  let best = 0;
  for (let i = 0; i < V; i++) {
    if (Number.isNaN(logits[i])) throw new RangeError(`Cannot sample: logit ${i} is NaN`);
    if (logits[i] > logits[best]) best = i;
  }
  if (options.temperature === 0) return best;
  let ids = Array.from({ length: V }, (_, i) => i);
  if (options.topK > 0 && options.topK < V) {
    ids = ids.sort((a, b) => logits[b] - logits[a] || a - b).slice(0, options.topK);
    ids.sort((a, b) => a - b);
  }
  const weights = ids.map((i) => Math.exp((logits[i] - logits[best]) / options.temperature));
  let target = u * weights.reduce((s, w) => s + w, 0);
  for (let j = 0; j < ids.length; j++) {
    target -= weights[j];
    if (target < 0) return ids[j];
  }
  // Rounding left `target` at or just above 0: the last candidate with any weight.
  for (let j = ids.length - 1; j > 0; j--) if (weights[j] > 0) return ids[j];
  return ids[0];
}

/**
 * Turns logits into tokens with a temperature, top-k and a seeded RNG: the
 * same options give the same tokens for the same logits.
 *
 * @example
 * ```ts
 * import { Sampler } from "./sample.ts";
 * const a = new Sampler({ seed: 1 }), b = new Sampler({ seed: 1 });
 * const logits = new Float32Array([0.1, 0.5, 0.2, 0.9]);
 * console.log(a.next(logits) === b.next(logits)); // true
 * ```
 */
export class Sampler {
  /** The softmax temperature (0: greedy). */
  readonly temperature: number;
  /** The number of most likely tokens drawn from (0: all). */
  readonly topK: number;
  readonly #rand: () => number;

  constructor(options: SamplerOptions = {}) {
    const temperature = options.temperature ?? 1;
    if (!Number.isFinite(temperature) || temperature < 0) {
      throw new RangeError(`Invalid temperature: ${temperature} (expected a number >= 0)`);
    }
    const topK = options.topK ?? 0;
    if (!Number.isSafeInteger(topK) || topK < 0) {
      throw new RangeError(`Invalid topK: ${topK} (expected an integer >= 0)`);
    }
    const seed = options.seed ?? 0;
    if (!Number.isSafeInteger(seed) || seed < 0) {
      throw new RangeError(`Invalid seed: ${seed} (expected an integer >= 0)`);
    }
    this.temperature = temperature;
    this.topK = topK;
    this.#rand = u32Rng(seed);
  }

  /** The next token for `logits` [V]. */
  next(logits: Float32Array): number {
    // Greedy draws nothing, so a greedy token between sampled ones leaves their sequence as is.
    const u = this.temperature === 0 ? 0 : this.#rand() / 4294967296;
    return pickToken(logits, this, u);
  }
}

/**
 * Continues `prompt` by `options.tokens` tokens on `model`: each step runs the
 * forward pass over the last `blockSize` tokens (row 0 of the model's batch)
 * and samples the next token from the logits at the last position.
 *
 * @example
 * ```ts ignore
 * const out = await generate(model, new TextEncoder().encode("The "), {
 *   tokens: 100,
 *   temperature: 0.8,
 *   seed: 1,
 * });
 * console.log(new TextDecoder().decode(new Uint8Array(out.tokens)));
 * ```
 */
export async function generate(
  model: GptModel,
  prompt: Tokens,
  options: GenerateOptions,
): Promise<Generation> {
  const { tokens } = options;
  if (!Number.isSafeInteger(tokens) || tokens < 1) {
    throw new RangeError(`Invalid tokens: ${tokens} (expected an integer >= 1)`);
  }
  const { blockSize: T, vocabSize: V } = model.config;
  if (prompt.length < 1) {
    throw new RangeError("Invalid prompt: empty (the model needs at least one token to continue)");
  }
  const bad = prompt.findIndex((t) => t >= V);
  if (bad >= 0) {
    throw new RangeError(`Invalid prompt: token ${prompt[bad]} at ${bad} >= vocabulary ${V}`);
  }
  const sampler = new Sampler(options);
  const seq = new Uint32Array(prompt.length + tokens);
  seq.set(prompt);
  const row = new Uint32Array(T);
  const t0 = performance.now();
  for (let n = prompt.length; n < seq.length; n++) {
    const context = seq.subarray(Math.max(0, n - T), n);
    // Causal attention: the zeros after the context do not reach its last position.
    row.fill(0);
    row.set(context);
    const token = sampler.next(await model.forwardLogits(row, [context.length - 1]));
    seq[n] = token;
    options.onToken?.(token);
  }
  return { tokens: seq.slice(prompt.length), seconds: (performance.now() - t0) / 1000 };
}

/** `tokens` as text: each token one byte, decoded as UTF-8 with U+FFFD for invalid sequences. */
export function bytesToText(tokens: ArrayLike<number>): string {
  return new TextDecoder().decode(Uint8Array.from(tokens));
}

/**
 * The text sample a run takes of its parameters at an evaluation (the
 * dashboard's, and the summary's at the end): `tokens` bytes continuing
 * `prompt`, drawn at `temperature` from the `topK` most likely (0: all) with
 * the RNG seeded by `seed`. The same settings every time, so that two samples
 * differ only by the parameters.
 */
export interface TextSampleSpec {
  /** The text continued, as UTF-8 bytes (not empty). */
  prompt: string;
  /** Bytes to generate; 0 takes no sample. */
  tokens: number;
  temperature: number;
  topK: number;
  seed: number;
}

/** A run's sample by default: 64 bytes after "The ", at temperature 0.8, seed 1. */
export const DEFAULT_TEXT_SAMPLE: Readonly<TextSampleSpec> = Object.freeze({
  prompt: "The ",
  tokens: 64,
  temperature: 0.8,
  topK: 0,
  seed: 1,
});

/**
 * The most bytes a sample may ask for, and the longest prompt: a sample is a
 * glimpse between inner steps, and the ask may come from another machine.
 */
export const MAX_TEXT_SAMPLE = 4096;

/**
 * `spec` over {@linkcode DEFAULT_TEXT_SAMPLE}, checked: a RangeError names
 * the field that is wrong (the spec may come off the network).
 *
 * @example
 * ```ts
 * import { textSample } from "./sample.ts";
 * console.log(textSample({ tokens: 16 }).prompt); // "The "
 * ```
 */
export function textSample(spec: Partial<TextSampleSpec> = {}): TextSampleSpec {
  if (typeof spec !== "object" || spec === null || Array.isArray(spec)) {
    throw new RangeError(`Invalid text sample: expected an object, got ${typeof spec}`);
  }
  const s = { ...DEFAULT_TEXT_SAMPLE, ...spec };
  if (typeof s.prompt !== "string" || s.prompt.length === 0) {
    throw new RangeError("Invalid text sample prompt: expected a non-empty string");
  }
  const bytes = new TextEncoder().encode(s.prompt).length;
  if (bytes > MAX_TEXT_SAMPLE) {
    throw new RangeError(`Invalid text sample prompt: ${bytes} bytes > ${MAX_TEXT_SAMPLE}`);
  }
  if (!Number.isSafeInteger(s.tokens) || s.tokens < 0 || s.tokens > MAX_TEXT_SAMPLE) {
    throw new RangeError(
      `Invalid text sample tokens: ${s.tokens} (expected an integer in [0, ${MAX_TEXT_SAMPLE}])`,
    );
  }
  // The sampler's own checks name temperature, topK and seed.
  new Sampler(s);
  return {
    prompt: s.prompt,
    tokens: s.tokens,
    temperature: s.temperature,
    topK: s.topK,
    seed: s.seed,
  };
}

/**
 * Why `text` cannot be a sample of `spec` (undefined when it can): it must be
 * a string of at most `spec.tokens` UTF-16 units, since each generated byte
 * decodes to at most one (a byte of a valid sequence of 2-4 bytes, or an
 * invalid byte's U+FFFD). The answer comes from another machine: a host
 * keeps no text that could not have been written.
 *
 * @example
 * ```ts
 * import { sampleProblem, textSample } from "./sample.ts";
 * console.log(sampleProblem("x".repeat(65), textSample())); // "65 characters for a sample of 64 bytes"
 * ```
 */
export function sampleProblem(text: unknown, spec: TextSampleSpec): string | undefined {
  if (typeof text !== "string") return `no text (${text === null ? "null" : typeof text})`;
  if (text.length > spec.tokens) {
    return `${text.length} characters for a sample of ${spec.tokens} bytes`;
  }
  return undefined;
}

/**
 * The text `model` continues `spec.prompt` with (see {@linkcode generate}),
 * decoded by {@linkcode bytesToText}; "" when `spec.tokens` is 0.
 */
export async function sampleText(model: GptModel, spec: TextSampleSpec): Promise<string> {
  if (spec.tokens === 0) return "";
  const prompt = new TextEncoder().encode(spec.prompt);
  return bytesToText((await generate(model, prompt, spec)).tokens);
}
