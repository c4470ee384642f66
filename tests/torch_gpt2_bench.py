#!/usr/bin/env python3
"""PyTorch baseline of the gpu bench suite: training-step tokens/s of our GPT-2.

The model is the one kernels/model.ts trains, written independently here:
byte vocabulary, learned positions, pre-LayerNorm blocks (eps 1e-5), causal
multi-head attention scaled by 1/sqrt(head size), GELU (tanh form), a tied
output head, GPT-2 init (N(0, 0.02), the two residual projections
N(0, 0.02/sqrt(2L)), biases 0, LayerNorm weights 1), mean cross-entropy,
global gradient-norm clipping to 1 and AdamW (betas 0.9/0.95, eps 1e-8,
weight decay 0.1 on the 2-D tensors only). Eager mode, no torch.compile.

Precisions: "fp32" sets float32 matmul precision "highest" (no TF32), "tf32"
sets "high" (TF32 tensor cores for matmuls and convolutions).

Timing: --warmup steps, then --blocks blocks of steps, each block timed from
synchronize to synchronize; a block is sized from the warm-up to last about
--block-seconds. The figure is the median block's tokens/s. The loss is not
read back per step, so the device never waits for the host.

Usage:
  python3 tests/torch_gpt2_bench.py --models '[{"name": "small", "nLayer": 2, "nHead": 4,
      "nEmbd": 64, "blockSize": 64, "vocabSize": 256}]' [--batch 16] [--device cuda|cpu]
      [--precisions fp32,tf32] [--warmup 5] [--blocks 5] [--block-seconds 1]
Prints one JSON line per model and precision: model, precision, tokens_per_s,
block_tokens_per_s, params, steps_per_block, loss_first, loss_last, attention,
torch, device. kernels/bench_gpu.ts runs it; tests/torch_gpt2_bench_test.ts
checks it on the CPU.
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, c, nh):
        super().__init__()
        self.nh = nh
        self.ln_1 = nn.LayerNorm(c, eps=1e-5)
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c, eps=1e-5)
        self.c_fc = nn.Linear(c, 4 * c)
        self.mlp_proj = nn.Linear(4 * c, c)

    def attention(self, x):
        b, t, c = x.shape
        hs = c // self.nh
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.nh, hs).transpose(1, 2) for z in (q, k, v))
        if hasattr(F, "scaled_dot_product_attention"):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # torch < 2.0
            att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            y = att @ v
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))

    def forward(self, x):
        x = x + self.attention(self.ln_1(x))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c, layers = cfg["nEmbd"], cfg["nLayer"]
        self.wte = nn.Embedding(cfg["vocabSize"], c)
        self.wpe = nn.Embedding(cfg["blockSize"], c)
        self.h = nn.ModuleList(Block(c, cfg["nHead"]) for _ in range(layers))
        self.ln_f = nn.LayerNorm(c, eps=1e-5)
        residual_std = 0.02 / math.sqrt(2 * layers)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = residual_std if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.t()  # tied output head
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def optimizer(model, lr):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(cfg, precision, args, device):
    torch.set_float32_matmul_precision("highest" if precision == "fp32" else "high")
    torch.manual_seed(1)
    model = Gpt(cfg).to(device)
    opt = optimizer(model, 1e-3)
    b, t = args.batch, cfg["blockSize"]
    gen = torch.Generator(device="cpu").manual_seed(2)
    data = torch.randint(0, cfg["vocabSize"], (b, t + 1), generator=gen).to(device)
    inputs, targets = data[:, :-1].contiguous(), data[:, 1:].contiguous()

    def step():
        loss = model(inputs, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    loss_first = step().item()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(max(0, args.warmup - 1)):
        loss = step()
    sync(device)
    per_step = (time.perf_counter() - t0) / max(1, args.warmup - 1)
    steps = max(1, min(args.max_steps_per_block, round(args.block_seconds / max(per_step, 1e-6))))
    rates = []
    for _ in range(args.blocks):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = step()
        sync(device)
        rates.append(steps * b * t / (time.perf_counter() - t0))
    return {
        "model": cfg["name"],
        "precision": precision,
        "tokens_per_s": statistics.median(rates),
        "block_tokens_per_s": rates,
        "params": sum(p.numel() for p in model.parameters()),
        "steps_per_block": steps,
        "loss_first": loss_first,
        "loss_last": loss.item(),
        "attention": "sdpa" if hasattr(F, "scaled_dot_product_attention") else "manual",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", required=True, help="JSON list of GptConfig objects with a name")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precisions", default="fp32,tf32")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--blocks", type=int, default=5)
    ap.add_argument("--block-seconds", type=float, default=1.0)
    ap.add_argument("--max-steps-per-block", type=int, default=200)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("torch_gpt2_bench: CUDA is not available", file=sys.stderr)
        sys.exit(2)
    for cfg in json.loads(args.models):
        for precision in args.precisions.split(","):
            if precision not in ("fp32", "tf32"):
                print(f"torch_gpt2_bench: unknown precision {precision}", file=sys.stderr)
                sys.exit(2)
            print(json.dumps(bench(cfg, precision, args, device)), flush=True)


if __name__ == "__main__":
    main()
