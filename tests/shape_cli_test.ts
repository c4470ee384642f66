/**
 * The shape flags and --grad-accum of `deno task train` and `deno task eval`
 * as subprocesses: bad values and shapes the device cannot hold exit 2 with
 * one line naming the flag or the limit; a short run of an overridden shape
 * with gradient accumulation writes a checkpoint of that shape that eval
 * accepts with the same flags and refuses with others, by name.
 */
import { equal, match, ok } from "@std/assert";
import { runCli } from "./_cli_run.ts";

const deno = runCli;

function assertUsage(r: { code: number; stderr: string }, re: RegExp): void {
  equal(r.code, 2, r.stderr);
  const lines = r.stderr.trim().split("\n");
  equal(lines.length, 1, `expected one line of stderr, got: ${r.stderr}`);
  match(lines[0], re);
}

Deno.test("train refuses bad shape flags and too-big shapes with one line and exit 2", async () => {
  const train = (args: string[]) => deno("kernels/train_main.ts", args);
  assertUsage(
    await train(["--n-head", "5", "--n-embd", "64"]),
    /^train: Invalid --n-head: 5 does not divide --n-embd 64$/,
  );
  assertUsage(await train(["--grad-accum", "0"]), /^train: Invalid --grad-accum: "0"/);
  // 12 GiB of attention scratch: over the binding limit of every adapter (2 GiB on an H200).
  assertUsage(
    await train(["--config", "gpt2-small", "--block-size", "4096"]),
    /^train: Cannot build model L12 C768 H12 T4096 V256 at batch 16: activation att .* needs 12\.00 GiB, more than the .* binding limit \(maxStorageBufferBindingSize\); the largest (batch|block size) that fits is \d+/,
  );
});

Deno.test("a run of an overridden shape with micro-batches writes that shape; eval checks the flags", async () => {
  const dir = await Deno.makeTempDir({ prefix: "shape_cli_" });
  try {
    const r = await deno("kernels/train_main.ts", [
      ...["--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "32"],
      ...["--batch", "2", "--grad-accum", "3", "--steps", "4", "--eval-every", "0"],
      ...["--eval-windows", "4", "--json", "--out", dir],
    ]);
    equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l));
    equal(lines[0].shape, "L1 C32 H2 T32 V256");
    equal(lines[0].grad_accum, 3);
    const done = lines.at(-1);
    equal(done.event, "done");
    ok(Number.isFinite(done.val_loss), String(done.val_loss));
    const ckpt = `${dir}/model.safetensors`;
    const ok1 = await deno("kernels/eval_main.ts", [
      ...["--checkpoint", ckpt, "--n-embd", "32", "--block-size", "32", "--max-windows", "4"],
      "--json",
    ]);
    equal(ok1.code, 0, ok1.stderr);
    const e = JSON.parse(ok1.stdout.trim().split("\n").at(-1)!);
    equal(e.windows, 4);
    assertUsage(
      await deno("kernels/eval_main.ts", ["--checkpoint", ckpt, "--n-layer", "4"]),
      new RegExp(`^eval: Invalid --n-layer: 4, the checkpoint .*model.safetensors has n_layer 1$`),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
