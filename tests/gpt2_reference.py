#!/usr/bin/env python3
"""Independent numpy GPT-2 forward pass: the evaluation loss (or the logits) of a checkpoint.

Reads a safetensors file directly (8-byte little-endian header length, JSON
header, raw little-endian tensors; nothing from the TypeScript code base),
builds a pre-LayerNorm GPT-2 with a tied output head in float64 and prints the
mean next-byte cross-entropy (nats/byte) over the data cut into windows of
block_size+1 bytes at offsets 0, T, 2T, ... (a trailing shorter window is
dropped), at most --max-windows windows -- the definition `deno task eval` uses.

Usage:
  python3 tests/gpt2_reference.py CHECKPOINT DATA_FILE [--max-windows N]
Prints one JSON line: {"eval_loss": ..., "windows": ...}

  python3 tests/gpt2_reference.py CHECKPOINT DATA_FILE --logits
Prints {"logits": [[...], ...]}: the logits [n, V] at every position of the
last n = min(len, block_size) bytes of the file, read as one context (the
sampler's forward pass, kernels/sample.ts).

tests/engine_cli_test.ts runs it against `deno task eval --json` and requires
agreement within 1e-4 relative.
"""
import argparse
import json
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    data = raw[8 + n :]
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = np.dtype(DTYPES[info["dtype"]]).newbyteorder("<")
        arr = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"])
        tensors[name] = arr.astype(np.float64)
    return tensors, meta


def layernorm(x, w, b, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def forward_logits(p, cfg, idx):
    """Logits [B, T, V] for idx of shape [B, T]."""
    B, T = idx.shape
    C, H = cfg["n_embd"], cfg["n_head"]
    hs = C // H
    x = p["wte.weight"][idx] + p["wpe.weight"][:T][None, :, :]
    mask = np.tril(np.ones((T, T), dtype=bool))
    for i in range(cfg["n_layer"]):
        pre = f"h.{i}."
        h = layernorm(x, p[pre + "ln_1.weight"], p[pre + "ln_1.bias"])
        qkv = h @ p[pre + "attn.c_attn.weight"] + p[pre + "attn.c_attn.bias"]
        q, k, v = np.split(qkv, 3, axis=-1)
        q = q.reshape(B, T, H, hs).transpose(0, 2, 1, 3)
        k = k.reshape(B, T, H, hs).transpose(0, 2, 1, 3)
        v = v.reshape(B, T, H, hs).transpose(0, 2, 1, 3)
        att = (q @ k.transpose(0, 1, 3, 2)) / np.sqrt(hs)
        att = np.where(mask, att, -np.inf)
        att = att - att.max(axis=-1, keepdims=True)
        att = np.exp(att)
        att = att / att.sum(axis=-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + y @ p[pre + "attn.c_proj.weight"] + p[pre + "attn.c_proj.bias"]
        h = layernorm(x, p[pre + "ln_2.weight"], p[pre + "ln_2.bias"])
        h = gelu(h @ p[pre + "mlp.c_fc.weight"] + p[pre + "mlp.c_fc.bias"])
        x = x + h @ p[pre + "mlp.c_proj.weight"] + p[pre + "mlp.c_proj.bias"]
    x = layernorm(x, p["ln_f.weight"], p["ln_f.bias"])
    return x @ p["wte.weight"].T


def forward_losses(p, cfg, idx, tgt):
    """Per-position cross-entropy for idx, tgt of shape [B, T]."""
    logits = forward_logits(p, cfg, idx)
    logits = logits - logits.max(axis=-1, keepdims=True)
    logz = np.log(np.exp(logits).sum(axis=-1))
    picked = np.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
    return logz - picked


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("data")
    ap.add_argument("--max-windows", type=int, default=None)
    ap.add_argument("--logits", action="store_true")
    args = ap.parse_args()
    p, meta = read_safetensors(args.checkpoint)
    cfg = json.loads(meta["config"])
    T = cfg["block_size"]
    data = np.frombuffer(open(args.data, "rb").read(), dtype=np.uint8).astype(np.int64)
    if args.logits:
        if len(data) == 0:
            print("no byte in the data", file=sys.stderr)
            sys.exit(1)
        logits = forward_logits(p, cfg, data[-T:][None, :])[0]
        print(json.dumps({"logits": logits.tolist()}))
        return
    total = 0 if len(data) < T + 1 else (len(data) - 1) // T
    n = total if args.max_windows is None else min(total, args.max_windows)
    if n == 0:
        print("no full window in the data", file=sys.stderr)
        sys.exit(1)
    loss_sum = 0.0
    chunk = 64
    for start in range(0, n, chunk):
        rows = range(start, min(n, start + chunk))
        idx = np.stack([data[r * T : r * T + T] for r in rows])
        tgt = np.stack([data[r * T + 1 : r * T + T + 1] for r in rows])
        loss_sum += forward_losses(p, cfg, idx, tgt).sum()
    print(json.dumps({"eval_loss": loss_sum / (n * T), "windows": n}))


if __name__ == "__main__":
    main()
