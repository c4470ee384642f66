/**
 * Any model shape: a named configuration with some of its fields overridden
 * (`--n-layer --n-head --n-embd --block-size` on the command line, or
 * `model: { nLayer, ... }` in the embedding API), checked with errors that
 * name the flag or field at fault.
 *
 * @module
 */
import type { FlagSpecs } from "./cli.ts";
import { DEFAULT_CONFIG, getConfig, type GptConfig } from "./config.ts";

/** The shape fields a run or a command line may override; the vocabulary stays the config's. */
export interface ShapeOverrides {
  /** Transformer blocks. */
  nLayer?: number;
  /** Attention heads; must divide the width. */
  nHead?: number;
  /** Model width. */
  nEmbd?: number;
  /** Context length. */
  blockSize?: number;
}

/** The overridable fields, their command-line flags and their allowed ranges. */
export const SHAPE_FIELDS: readonly {
  field: keyof ShapeOverrides;
  flag: string;
  max: number;
}[] = [
  { field: "nLayer", flag: "n-layer", max: 256 },
  { field: "nHead", flag: "n-head", max: 256 },
  { field: "nEmbd", flag: "n-embd", max: 16384 },
  { field: "blockSize", flag: "block-size", max: 16384 },
];

/**
 * The shape flags' declarations for a command (see kernels/cli.ts), each help
 * text ending in `note`.
 *
 * @example
 * ```ts
 * import { shapeFlagSpecs } from "./shape.ts";
 * console.log(shapeFlagSpecs("(must match the checkpoint)")["n-layer"].help);
 * // transformer blocks (must match the checkpoint)
 * ```
 */
export function shapeFlagSpecs(note: string) {
  return {
    "n-layer": { value: "N", help: `transformer blocks ${note}` },
    "n-head": { value: "N", help: `attention heads; must divide the width ${note}` },
    "n-embd": { value: "N", help: `model width ${note}` },
    "block-size": { value: "N", help: `context length T ${note}` },
  } as const satisfies FlagSpecs;
}

/** The shape flags of a command that builds a model: each overrides the config's field. */
export const SHAPE_FLAGS = shapeFlagSpecs("(default: the config's)");

/** How errors name a field: as a command-line flag (`--n-head`) or as an option (`nHead`). */
export type ShapeNaming = "flag" | "field";

function label(field: keyof ShapeOverrides, naming: ShapeNaming): string {
  const f = SHAPE_FIELDS.find((s) => s.field === field)!;
  return naming === "flag" ? `--${f.flag}` : f.field;
}

/**
 * Reads the shape flags of parsed command-line values (strings); absent
 * flags stay absent. Throws a RangeError naming the flag on a bad value.
 *
 * @example
 * ```ts
 * import { shapeFlags } from "./shape.ts";
 * console.log(shapeFlags({ "n-layer": "4" })); // { nLayer: 4 }
 * ```
 */
export function shapeFlags(values: Record<string, unknown>): ShapeOverrides {
  const out: ShapeOverrides = {};
  for (const { field, flag, max } of SHAPE_FIELDS) {
    const raw = values[flag];
    if (raw === undefined) continue;
    const text = String(raw);
    const n = Number(text);
    if (!/^\s*\d+\s*$/.test(text) || !Number.isSafeInteger(n) || n < 1 || n > max) {
      throw new RangeError(
        `Invalid --${flag}: ${JSON.stringify(text)} (expected an integer in [1, ${max}])`,
      );
    }
    out[field] = n;
  }
  return out;
}

/**
 * The model shape of config `name` (default "small") with `overrides`
 * applied, checked: each field an integer in its range, the heads dividing
 * the width. Errors name the flag (`Invalid --n-head: 5 does not divide
 * --n-embd 64`) or, with `naming: "field"`, the option.
 *
 * @example
 * ```ts
 * import { resolveShape } from "./shape.ts";
 * console.log(resolveShape("small", { nLayer: 4 }).nLayer); // 4
 * ```
 *
 * @throws {RangeError} on an unknown config name or a bad shape
 */
export function resolveShape(
  name: string = DEFAULT_CONFIG,
  overrides: ShapeOverrides = {},
  naming: ShapeNaming = "flag",
): GptConfig {
  const base = getConfig(name).model;
  if (typeof overrides !== "object" || overrides === null) {
    throw new TypeError(
      "Invalid model shape: expected an object of nLayer, nHead, nEmbd, blockSize",
    );
  }
  for (const key of Object.keys(overrides)) {
    if (!SHAPE_FIELDS.some((s) => s.field === key)) {
      throw new RangeError(
        `Invalid model shape: unknown field ${JSON.stringify(key)} (known: ${
          SHAPE_FIELDS.map((s) => s.field).join(", ")
        })`,
      );
    }
  }
  const config: GptConfig = { ...base };
  for (const { field, max } of SHAPE_FIELDS) {
    const v = overrides[field];
    if (v === undefined) continue;
    if (typeof v !== "number" || !Number.isSafeInteger(v) || v < 1 || v > max) {
      throw new RangeError(
        `Invalid ${label(field, naming)}: ${
          JSON.stringify(v)
        } (expected an integer in [1, ${max}])`,
      );
    }
    config[field] = v;
  }
  if (config.nEmbd % config.nHead !== 0) {
    const from = (field: keyof ShapeOverrides) =>
      overrides[field] !== undefined
        ? `${label(field, naming)} ${config[field]}`
        : `the ${label(field, naming).replace(/^--/, "")} ${config[field]} of config ${name}`;
    throw new RangeError(
      overrides.nHead !== undefined || overrides.nEmbd === undefined
        ? `Invalid ${label("nHead", naming)}: ${config.nHead} does not divide ${from("nEmbd")}`
        : `Invalid ${label("nEmbd", naming)}: ${config.nEmbd} is not a multiple of ${
          from("nHead")
        }`,
    );
  }
  return config;
}

/** True when `overrides` sets any field. */
export function hasOverrides(overrides: ShapeOverrides | undefined): boolean {
  return overrides !== undefined && SHAPE_FIELDS.some((s) => overrides[s.field] !== undefined);
}
