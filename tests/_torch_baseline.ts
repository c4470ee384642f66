/**
 * Runs tests/torch_gpt2_bench.py, the PyTorch baseline of the gpu bench suite,
 * as a subprocess: finds an interpreter that imports torch, runs the script on
 * a list of model shapes and parses its JSON lines.
 *
 * @module
 */
import { fileURLToPath } from "node:url";
import type { GptConfig } from "../kernels/config.ts";

/** The interpreters tried, in order: the one on PATH, then Debian's (where apt puts python3-torch). */
export const PYTHONS = ["python3", "/usr/bin/python3"];

/** What {@linkcode findTorch} found. */
export interface TorchProbe {
  /** The interpreter that imports torch, if any. */
  python?: string;
  /** torch.__version__ there. */
  version?: string;
  /** Whether torch sees a CUDA device. */
  cuda: boolean;
  /** The CUDA device's name, when there is one. */
  deviceName?: string;
  /** Why there is no CUDA baseline, when there is none. */
  missing?: string;
}

/** One line of the script's output. */
export interface TorchResult {
  /** The model's name, as passed in. */
  model: string;
  /** "fp32" (no TF32) or "tf32". */
  precision: "fp32" | "tf32";
  /** Median block's training tokens per second. */
  tokens_per_s: number;
  /** Every block's tokens per second. */
  block_tokens_per_s: number[];
  /** Parameters of the PyTorch model (tied embeddings counted once). */
  params: number;
  /** Steps per timed block. */
  steps_per_block: number;
  /** Loss of the first step. */
  loss_first: number;
  /** Loss of the last timed step. */
  loss_last: number;
  /** "sdpa" (scaled_dot_product_attention) or "manual". */
  attention: string;
  /** torch.__version__. */
  torch: string;
  /** The device's name. */
  device: string;
}

const PROBE = "import json, torch; c = torch.cuda.is_available(); print(json.dumps(" +
  "{'version': torch.__version__, 'cuda': c, 'name': torch.cuda.get_device_name(0) if c else None}))";

/**
 * The first of `pythons` that imports torch with CUDA, else the first that
 * imports torch at all, with `missing` saying why there is no CUDA baseline.
 *
 * @example
 * ```ts ignore
 * const torch = await findTorch();
 * console.log(torch.cuda ? torch.deviceName : torch.missing);
 * ```
 */
export async function findTorch(pythons: string[] = PYTHONS): Promise<TorchProbe> {
  let cpuOnly: TorchProbe | undefined;
  const tried: string[] = [];
  for (const python of pythons) {
    try {
      const out = await new Deno.Command(python, {
        args: ["-c", PROBE],
        stdout: "piped",
        stderr: "null",
        signal: AbortSignal.timeout(60_000),
      }).output();
      if (!out.success) {
        tried.push(`${python}: no torch`);
        continue;
      }
      const p = JSON.parse(new TextDecoder().decode(out.stdout));
      const probe = { python, version: p.version, cuda: p.cuda, deviceName: p.name ?? undefined };
      if (probe.cuda) return probe;
      cpuOnly ??= { ...probe, missing: `torch ${p.version} at ${python} sees no CUDA device` };
    } catch {
      tried.push(`${python}: not found`);
    }
  }
  return cpuOnly ?? { cuda: false, missing: `no torch (${tried.join(", ")})` };
}

/** Options of {@linkcode runTorchBaseline}. */
export interface TorchRunOptions {
  /** The interpreter ({@linkcode findTorch}). */
  python: string;
  /** Sequences per step. */
  batch: number;
  /** "cuda" (default) or "cpu". */
  device?: string;
  /** Default ["fp32", "tf32"]. */
  precisions?: ("fp32" | "tf32")[];
  /** Warm-up steps (default 5). */
  warmup?: number;
  /** Timed blocks (default 5). */
  blocks?: number;
  /** Target seconds per block (default 1). */
  blockSeconds?: number;
  /** Kill the script after this many ms (default 300000). */
  timeoutMs?: number;
}

/**
 * Runs the PyTorch baseline on `models` (each a GptConfig with a name) and
 * returns its results in order. Throws with the script's stderr when it fails.
 *
 * @example
 * ```ts ignore
 * const results = await runTorchBaseline([{ name: "small", ...getConfig("small").model }], {
 *   python: "python3",
 *   batch: 16,
 * });
 * ```
 */
export async function runTorchBaseline(
  models: (GptConfig & { name: string })[],
  options: TorchRunOptions,
): Promise<TorchResult[]> {
  const script = fileURLToPath(new URL("./torch_gpt2_bench.py", import.meta.url));
  const args = [
    script,
    "--models",
    JSON.stringify(models),
    "--batch",
    String(options.batch),
    "--device",
    options.device ?? "cuda",
    "--precisions",
    (options.precisions ?? ["fp32", "tf32"]).join(","),
    "--warmup",
    String(options.warmup ?? 5),
    "--blocks",
    String(options.blocks ?? 5),
    "--block-seconds",
    String(options.blockSeconds ?? 1),
  ];
  const out = await new Deno.Command(options.python, {
    args,
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(options.timeoutMs ?? 300_000),
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    const err = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-5).join(" | ");
    throw new Error(`Cannot run the PyTorch baseline: exit ${out.code}: ${err}`);
  }
  return text.split("\n").filter((l) => l.trim()).map((l) => JSON.parse(l) as TorchResult);
}
