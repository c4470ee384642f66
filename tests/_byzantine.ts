/**
 * The Byzantine rows of `deno task experiment`: five DiLoCo trainers of
 * which the last is hostile ({@linkcode adversarialDelta}), combined by the
 * plain token-weighted mean or by a robust rule (actors/robust_aggregate.ts),
 * against four honest trainers. Every row trains the same steps per trainer
 * with the same seed, so the honest trainers of every row read the same data
 * and spend the same tokens.
 *
 * @module
 */
import { hashSeed, mulberry32 } from "../transport/rng.ts";
import {
  type AggregateRule,
  DEFAULT_AGGREGATE,
  formatAggregate,
} from "../actors/robust_aggregate.ts";

/**
 * What the hostile trainer sends instead of its pseudo-gradient Δ: "flip"
 * −Δ, "scale" 20 × Δ (under the aggregator's absurd-norm bound of 100 × the
 * median), "noise" Gaussian noise with Δ's norm.
 */
export type Adversary = "flip" | "scale" | "noise";

/** The factor of the "scale" adversary. */
export const ADVERSARY_SCALE = 20;

/**
 * The hostile trainer's contribution in round `round`: a new array, Δ left
 * as it is. The noise is seeded by `seed` and the round, so a rerun sends the
 * same bits.
 *
 * @example
 * ```ts
 * import { adversarialDelta } from "./_byzantine.ts";
 * console.log(adversarialDelta(new Float32Array([1, -2]), "flip", { seed: 1, round: 0 }));
 * // Float32Array [-1, 2]
 * ```
 */
export function adversarialDelta(
  delta: Float32Array,
  kind: Adversary,
  at: { seed: number; round: number },
): Float32Array {
  switch (kind) {
    case "flip":
      return delta.map((x) => -x);
    case "scale":
      return delta.map((x) => ADVERSARY_SCALE * x);
    case "noise": {
      const rand = mulberry32(hashSeed(`byzantine-noise/${at.round}`, at.seed));
      const z = new Float32Array(delta.length);
      for (let i = 0; i < z.length; i += 2) {
        // Box-Muller: two normal draws from two uniform ones.
        const r = Math.sqrt(-2 * Math.log(1 - rand()));
        const a = 2 * Math.PI * rand();
        z[i] = r * Math.cos(a);
        if (i + 1 < z.length) z[i + 1] = r * Math.sin(a);
      }
      const norm = (x: Float32Array) => Math.sqrt(x.reduce((s, v) => s + v * v, 0));
      const f = norm(z) > 0 ? norm(delta) / norm(z) : 0;
      return z.map((x) => x * f);
    }
  }
}

/** Checks a name from the command line; a RangeError names it otherwise. */
export function parseAdversary(text: string): Adversary {
  if (text === "flip" || text === "scale" || text === "noise") return text;
  throw new RangeError(`Invalid adversary: "${text}" (known: flip, scale, noise)`);
}

/** The fields of an experiment configuration the Byzantine rows set. */
export interface ByzantineRow {
  name: string;
  description: string;
  trainers: number;
  aggregate?: AggregateRule;
  adversary?: Adversary;
}

/**
 * The rows: honest 4 trainers (the reference), honest 5 with the mean and
 * with `robust` (what the robust rule costs with no adversary), and each
 * adversary among 5 trainers with the mean and with `robust`.
 *
 * @example
 * ```ts
 * import { byzantineRows } from "./_byzantine.ts";
 * console.log(byzantineRows({ kind: "median" }).length); // 9
 * ```
 */
export function byzantineRows(robust: AggregateRule): ByzantineRow[] {
  const rule = formatAggregate(robust);
  const rows: ByzantineRow[] = [
    { name: "byz-honest4", description: "4 honest trainers, mean", trainers: 4 },
    { name: "byz-honest5-mean", description: "5 honest trainers, mean", trainers: 5 },
    {
      name: "byz-honest5-robust",
      description: `5 honest trainers, ${rule}`,
      trainers: 5,
      aggregate: robust,
    },
  ];
  const what: Record<Adversary, string> = {
    flip: "sign-flipped",
    scale: `scaled ×${ADVERSARY_SCALE}`,
    noise: "Gaussian noise of its norm",
  };
  for (const adversary of ["flip", "scale", "noise"] as const) {
    for (const robustRow of [false, true]) {
      rows.push({
        name: `byz-${adversary}-${robustRow ? "robust" : "mean"}`,
        description: `4 honest + 1 ${what[adversary]}, ${
          robustRow ? rule : formatAggregate(DEFAULT_AGGREGATE)
        }`,
        trainers: 5,
        adversary,
        ...(robustRow ? { aggregate: robust } : {}),
      });
    }
  }
  return rows;
}
