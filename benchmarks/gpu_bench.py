"""GPU checks and timings (run through benchmarks/gpu.sh on a lent GPU).

1. The CUDA dispatch against the CPU path on the same inputs: fla's chunk_gla vs chunk_gla_torch and
   mamba_ssm's mamba_chunk_scan_combined vs ssd_scan_torch (fp32 and bf16, values and gradients).
2. Training-step throughput (forward, backward, AdamW) of this project's models at GLA-340M and
   Mamba2-370m shapes, 4K context, bf16: tokens/s and MFU against the card's dense bf16 peak.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def check_kernels(dtype):
    from statex_dist.ops import chunk_gla_torch, gla_attention, ssd_scan, ssd_scan_torch
    torch.manual_seed(0)
    out = {}
    B, T, H, K, V = 2, 1024, 4, 128, 256
    q, k = (torch.randn(B, T, H, K, device="cuda", dtype=dtype, requires_grad=True) for _ in range(2))
    v = torch.randn(B, T, H, V, device="cuda", dtype=dtype, requires_grad=True)
    g = (torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, device="cuda")) / 16).to(dtype).requires_grad_()
    o1, _ = gla_attention(q, k, v, g)
    o2, _ = chunk_gla_torch(q, k, v, g)
    out["gla_fwd"] = rel(o1, o2)
    gr1 = torch.autograd.grad(o1.float().sum(), (q, k, v, g))
    gr2 = torch.autograd.grad(o2.float().sum(), (q, k, v, g))
    out["gla_bwd"] = max(rel(a, b) for a, b in zip(gr1, gr2))
    b, l, h, p, n = 2, 1024, 32, 64, 128
    x = torch.randn(b, l, h, p, device="cuda", dtype=dtype)
    dt = torch.randn(b, l, h, device="cuda", dtype=dtype)
    A = -torch.rand(h, device="cuda") - 0.5
    Bm, Cm = (torch.randn(b, l, 1, n, device="cuda", dtype=dtype) for _ in range(2))
    D, dtb = torch.ones(h, device="cuda"), torch.zeros(h, device="cuda")
    y1 = ssd_scan(x, dt, A, Bm, Cm, 256, D=D, dt_bias=dtb, dt_softplus=True)
    y2 = ssd_scan_torch(x, dt, A, Bm, Cm, 256, D=D, dt_bias=dtb, dt_softplus=True)
    out["ssd_fwd"] = rel(y1, y2)
    return out


def step_throughput(cfg, T: int, batch: int, steps: int):
    from statex_dist.models import build_model
    model = build_model(cfg, dtype=torch.bfloat16).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (batch, T), device="cuda")
    n = sum(p.numel() for p in model.parameters())
    times = []
    for i in range(steps + 2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(ids, labels=ids).backward()
        opt.step()
        torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    t = sorted(times)[len(times) // 2]
    return n, batch * T / t, torch.cuda.max_memory_allocated() / 2 ** 30


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    from statex_dist.config import GLAConfig, Mamba2Config
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    res = {"device": name, "checks_fp32": check_kernels(torch.float32), "checks_bf16": check_kernels(torch.bfloat16)}
    for label, cfg in (
        ("GLA-340M", GLAConfig(vocab_size=32000, hidden_size=1024, num_layers=24, num_heads=4)),
        ("Mamba2-370m", Mamba2Config(vocab_size=50288, hidden_size=1024, num_layers=48, d_state=128, headdim=64,
                                     tie_word_embeddings=True)),
    ):
        n, tps, mem = step_throughput(cfg, args.seq_len, args.batch, args.steps)
        mfu = 6 * n * tps / peak if peak else None
        res[label] = {"params": n, "tokens_per_s": round(tps), "mfu": mfu and round(mfu, 3), "max_mem_gib": round(mem, 1)}
        print(f"{label}: {n:,} params, {tps:,.0f} tok/s, MFU {mfu if mfu is None else f'{mfu:.1%}'}, {mem:.1f} GiB")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
