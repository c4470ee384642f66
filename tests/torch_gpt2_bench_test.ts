import assert from "@std/assert";
import { findTorch, runTorchBaseline } from "./_torch_baseline.ts";
import { getConfig } from "../kernels/config.ts";
import { buildLayout } from "../kernels/layout.ts";

// Debian's python3-torch (1.13, CPU) is enough to check the script; without any torch, skip.
const torch = await findTorch();

Deno.test({
  name: "torch_gpt2_bench.py: the same parameter count as ours, ln(256) at init, loss falls",
  ignore: torch.python === undefined,
  async fn() {
    const config = getConfig("small").model;
    const [fp32, tf32] = await runTorchBaseline([{ name: "small", ...config }], {
      python: torch.python!,
      batch: 4,
      device: "cpu",
      warmup: 3,
      blocks: 2,
      blockSeconds: 0.2,
      timeoutMs: 120_000,
    });
    assert.deepEqual([fp32.precision, tf32.precision], ["fp32", "tf32"]);
    for (const r of [fp32, tf32]) {
      assert.equal(r.model, "small");
      // Tied embeddings, learned positions, every bias and LayerNorm: the parameters of our layout.
      assert.equal(r.params, buildLayout(config).paramCount);
      assert.ok(Math.abs(r.loss_first - Math.log(256)) < 0.05, `loss at init ${r.loss_first}`);
      // One fixed batch, 3 warm-up and 2 blocks of AdamW steps at lr 1e-3: it is memorized a little.
      assert.ok(r.loss_last < r.loss_first - 0.1, `${r.loss_first} -> ${r.loss_last}`);
      assert.ok(r.tokens_per_s > 0 && Number.isFinite(r.tokens_per_s));
      assert.equal(r.block_tokens_per_s.length, 2);
      assert.equal(r.device, "cpu");
    }
  },
});

Deno.test({
  name: "torch_gpt2_bench.py refuses CUDA when there is none, with the reason",
  ignore: torch.python === undefined || torch.cuda,
  async fn() {
    await assert.rejects(
      () =>
        runTorchBaseline([{ name: "tiny", ...getConfig("tiny").model }], {
          python: torch.python!,
          batch: 1,
        }),
      /Cannot run the PyTorch baseline: exit 2: torch_gpt2_bench: CUDA is not available/,
    );
  },
});
