/**
 * Byzantine-robust rules for combining a round's pseudo-gradients, one
 * shard at a time ({@linkcode robustCombine}), and the `--aggregate` text
 * that names them ({@linkcode parseAggregate}).
 *
 * The run's default stays the token-weighted mean (in actors/aggregation.ts):
 * it is the best estimate when every trainer is honest, but one trainer can
 * move it anywhere. The robust rules bound what one contribution can do:
 *
 * - `trimmed-mean:F`: per coordinate, drop the floor(F × n) smallest and
 *   largest values and average the rest (0 <= F < 0.5);
 * - `median`: per coordinate, the median;
 * - `clip:TAU`: centered clipping (Karimireddy, He and Jaggi, 2021) around
 *   the previous round's combined pseudo-gradient c: each xᵢ − c longer
 *   than τ is shortened to τ, and the result is c + mean of the clipped
 *   differences. τ is TAU times the median of the round's ‖xᵢ − c‖, so the
 *   rule follows the pseudo-gradient's scale as the learning rate decays.
 *
 * Robust rules count every contribution once, whatever tokens it claims: a
 * hostile peer could otherwise buy weight by claiming many tokens.
 *
 * Every rule works in fp32 on the contributions in the order given (the
 * aggregator sorts them by trainer id), so the same inputs give the same
 * bits whatever order they arrived in; the order statistics do not even
 * depend on that order.
 *
 * @module
 */

/** How an aggregator combines a round's contributions. */
export type AggregateRule =
  | { kind: "mean" }
  | { kind: "trimmed-mean"; trim: number }
  | { kind: "median" }
  | { kind: "clip"; tau: number };

/** The run's default: the token-weighted mean (right for small honest runs). */
export const DEFAULT_AGGREGATE: Readonly<AggregateRule> = Object.freeze({ kind: "mean" });

/** What `--aggregate` accepts, for help texts and error messages. */
export const AGGREGATE_SYNTAX = "mean, trimmed-mean:F (0 <= F < 0.5), median, clip:TAU (TAU > 0)";

/**
 * Parses `mean`, `trimmed-mean:F`, `median` or `clip:TAU`; a RangeError
 * names what was wrong.
 *
 * @example
 * ```ts
 * import { parseAggregate } from "./robust_aggregate.ts";
 * console.log(parseAggregate("trimmed-mean:0.2")); // { kind: "trimmed-mean", trim: 0.2 }
 * ```
 */
export function parseAggregate(text: string): AggregateRule {
  const [name, arg, ...rest] = text.trim().split(":");
  const bad = (why: string) =>
    new RangeError(`Invalid aggregate rule "${text}": ${why} (known: ${AGGREGATE_SYNTAX})`);
  if (rest.length > 0) throw bad("more than one parameter");
  const num = () => {
    const x = Number(arg);
    if (arg === undefined || arg.trim() === "" || !Number.isFinite(x)) {
      throw bad(`"${name}" needs a number after the colon`);
    }
    return x;
  };
  switch (name) {
    case "mean":
    case "median":
      if (arg !== undefined) throw bad(`"${name}" takes no parameter`);
      return { kind: name };
    case "trimmed-mean": {
      const trim = num();
      if (!(trim >= 0 && trim < 0.5)) throw bad(`trim fraction ${trim} is not in [0, 0.5)`);
      return { kind: "trimmed-mean", trim };
    }
    case "clip": {
      const tau = num();
      if (!(tau > 0)) throw bad(`clip radius ${tau} is not > 0`);
      return { kind: "clip", tau };
    }
    default:
      throw bad(`unknown rule "${name}"`);
  }
}

/**
 * The text form of a rule, the inverse of {@linkcode parseAggregate}.
 *
 * @example
 * ```ts
 * import { formatAggregate } from "./robust_aggregate.ts";
 * console.log(formatAggregate({ kind: "clip", tau: 2 })); // "clip:2"
 * ```
 */
export function formatAggregate(rule: AggregateRule): string {
  switch (rule.kind) {
    case "trimmed-mean":
      return `trimmed-mean:${rule.trim}`;
    case "clip":
      return `clip:${rule.tau}`;
    default:
      return rule.kind;
  }
}

/** Sorts the first `k` entries of `v` ascending (insertion sort: k is a handful of trainers). */
function sortSmall(v: Float32Array, k: number): void {
  for (let i = 1; i < k; i++) {
    const x = v[i];
    let j = i - 1;
    while (j >= 0 && v[j] > x) {
      v[j + 1] = v[j];
      j--;
    }
    v[j + 1] = x;
  }
}

/** Per coordinate: sort the k values, then `pick` reads the sorted column. */
function orderStatistic(
  rows: readonly Float32Array[],
  n: number,
  pick: (sorted: Float32Array, k: number) => number,
): Float32Array {
  const k = rows.length;
  const col = new Float32Array(k);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    for (let t = 0; t < k; t++) col[t] = rows[t][i];
    sortSmall(col, k);
    out[i] = pick(col, k);
  }
  return out;
}

function trimmedMean(rows: readonly Float32Array[], n: number, trim: number): Float32Array {
  const k = rows.length;
  const cut = Math.floor(trim * k);
  const keep = k - 2 * cut;
  return orderStatistic(rows, n, (s) => {
    let sum = 0;
    for (let t = cut; t < k - cut; t++) sum = Math.fround(sum + s[t]);
    return Math.fround(sum / keep);
  });
}

function median(rows: readonly Float32Array[], n: number): Float32Array {
  return orderStatistic(rows, n, (s, k) => {
    const m = k >> 1;
    return k % 2 ? s[m] : Math.fround(Math.fround(s[m - 1] + s[m]) * 0.5);
  });
}

function medianOf(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function centeredClip(
  rows: readonly Float32Array[],
  n: number,
  tau: number,
  center: Float32Array,
): Float32Array {
  const k = rows.length;
  const dist = rows.map((x) => {
    let s2 = 0;
    for (let i = 0; i < n; i++) {
      const d = Math.fround(x[i] - center[i]);
      s2 += d * d;
    }
    return Math.sqrt(s2);
  });
  const radius = tau * medianOf(dist);
  const out = new Float32Array(n);
  for (let t = 0; t < k; t++) {
    // Contributions within the radius count in full; the rest are shortened to it.
    const f = Math.fround((dist[t] > radius ? radius / dist[t] : 1) / k);
    const x = rows[t];
    for (let i = 0; i < n; i++) {
      out[i] = Math.fround(out[i] + Math.fround(f * Math.fround(x[i] - center[i])));
    }
  }
  for (let i = 0; i < n; i++) out[i] = Math.fround(out[i] + center[i]);
  return out;
}

/**
 * Combines the dequantized pseudo-gradients `rows` (one per contribution,
 * sorted by trainer id, all of one length) with a robust `rule`. `center` is
 * the previous round's combined pseudo-gradient, read by `clip` (zeros when
 * absent: the first round clips around the origin). "mean" here is the
 * unweighted mean; the aggregator's token-weighted mean lives with it.
 *
 * @throws {RangeError} when `rows` is empty or lengths differ
 *
 * @example Median of three
 * ```ts
 * import { robustCombine } from "./robust_aggregate.ts";
 * const rows = [[1, 5], [2, -100], [300, 4]].map((r) => new Float32Array(r));
 * console.log(robustCombine(rows, { kind: "median" })); // Float32Array [2, 4]
 * ```
 */
export function robustCombine(
  rows: readonly Float32Array[],
  rule: AggregateRule,
  options: { center?: Float32Array } = {},
): Float32Array {
  if (rows.length === 0) throw new RangeError("Cannot combine contributions: none given");
  const n = rows[0].length;
  for (const [t, r] of rows.entries()) {
    if (r.length !== n) {
      throw new RangeError(`Cannot combine contributions: row ${t} has ${r.length} of ${n} values`);
    }
  }
  switch (rule.kind) {
    case "mean":
      return trimmedMean(rows, n, 0);
    case "trimmed-mean":
      return trimmedMean(rows, n, rule.trim);
    case "median":
      return median(rows, n);
    case "clip": {
      const center = options.center ?? new Float32Array(n);
      if (center.length !== n) {
        throw new RangeError(
          `Cannot combine contributions: center has ${center.length} of ${n} values`,
        );
      }
      return centeredClip(rows, n, rule.tau, center);
    }
  }
}
