"""CPU forward+backward timings of the PyTorch kernel paths against the references they replace.

- GLA: ``chunk_gla_torch`` vs fla's ``naive_recurrent_gla`` (fla's CPU path, a loop over tokens),
  GLA-340M head shapes: hidden 1024, 4 heads, K = 128 (expand_k 0.5), V = 256 per head.
- Gated DeltaNet: ``chunk_gated_delta_rule_torch`` vs fla's ``naive_recurrent_gated_delta_rule`` (fla's CPU
  path, a loop over tokens), the same head shapes (4 heads, K = 128, V = 256) with L2-normalised q, k.
- SSD: transformers' ``Mamba2Mixer`` forward (its pure-PyTorch path on the CPU) vs the same mixer
  rebuilt from statex_dist.ops (in_proj, causal_conv1d, ssd_scan_torch, gated norm, out_proj) with
  its weights, Mamba2-370m-like shapes: hidden 1024, expand 2, head_dim 64, state 128, 1 group, chunk 256.

Usage: python benchmarks/kernels_cpu.py [--seq-len 2048] [--reps 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import torch
import torch.nn.functional as F

from statex_dist.ops import causal_conv1d, chunk_gated_delta_rule_torch, chunk_gla_torch, ssd_scan_torch


def time_fwd_bwd(fn, inputs, reps, warmup=1):
    """Median forward and backward seconds of loss = sum(out * cotangent) over ``reps`` runs."""
    fwd, bwd = [], []
    cot = None
    for i in range(warmup + reps):
        for t in inputs:
            t.grad = None
        t0 = time.perf_counter()
        out = fn()
        t1 = time.perf_counter()
        if cot is None:
            cot = torch.randn_like(out)
        (out * cot).sum().backward()
        t2 = time.perf_counter()
        if i >= warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return statistics.median(fwd), statistics.median(bwd), out


def bench_gla(T, reps):
    from fla.ops.gla.naive import naive_recurrent_gla

    B, H, K, V = 1, 4, 128, 256
    q = torch.randn(B, T, H, K, requires_grad=True)
    k = torch.randn(B, T, H, K, requires_grad=True)
    v = torch.randn(B, T, H, V, requires_grad=True)
    g = (F.logsigmoid(torch.randn(B, T, H, K)) / 16).requires_grad_()
    ins = [q, k, v, g]
    ref = time_fwd_bwd(lambda: naive_recurrent_gla(q, k, v, g)[0], ins, reps=max(1, reps // 2))
    ours = time_fwd_bwd(lambda: chunk_gla_torch(q, k, v, g)[0], ins, reps=reps)
    err = ((ours[2] - ref[2]).abs().max() / ref[2].abs().max()).item()
    return ref, ours, err


def bench_gdn(T, reps):
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    B, H, K, V = 1, 4, 128, 256
    q = F.normalize(torch.randn(B, T, H, K), dim=-1).requires_grad_()
    k = F.normalize(torch.randn(B, T, H, K), dim=-1).requires_grad_()
    v = torch.randn(B, T, H, V, requires_grad=True)
    g = F.logsigmoid(torch.randn(B, T, H) + 2).requires_grad_()
    beta = torch.rand(B, T, H, requires_grad=True)
    ins = [q, k, v, g, beta]
    # fla's reference takes beta before g
    ref = time_fwd_bwd(lambda: naive_recurrent_gated_delta_rule(q, k, v, beta, g)[0], ins, reps=max(1, reps // 2))
    ours = time_fwd_bwd(lambda: chunk_gated_delta_rule_torch(q, k, v, g, beta)[0], ins, reps=reps)
    err = ((ours[2] - ref[2]).abs().max() / ref[2].abs().max()).item()
    return ref, ours, err


def mixer_via_ops(m, hidden):
    """transformers' Mamba2Mixer forward from its own weights, through statex_dist.ops."""
    b, l, _ = hidden.shape
    z, xBC, dt = m.in_proj(hidden).split([m.intermediate_size, m.conv_dim, m.num_heads], dim=-1)
    xBC = causal_conv1d(xBC, m.conv1d.weight.squeeze(1), m.conv1d.bias, activation="silu")
    GN = m.n_groups * m.ssm_state_size
    x, Bm, Cm = xBC.split([m.intermediate_size, GN, GN], dim=-1)
    y = ssd_scan_torch(
        x.reshape(b, l, m.num_heads, m.head_dim), dt, -torch.exp(m.A_log.float()),
        Bm.reshape(b, l, m.n_groups, -1), Cm.reshape(b, l, m.n_groups, -1), m.chunk_size,
        D=m.D, dt_bias=m.dt_bias, dt_softplus=True, dt_limit=m.time_step_limit,
    )
    return m.out_proj(m.norm(y.reshape(b, l, -1), z))


def bench_ssd(T, reps):
    from transformers import Mamba2Config
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    cfg = Mamba2Config(
        hidden_size=1024, expand=2, head_dim=64, num_heads=32, state_size=128, n_groups=1,
        chunk_size=256, conv_kernel=4, num_hidden_layers=1, vocab_size=32,
    )
    m = Mamba2Mixer(cfg, layer_idx=0).float()
    hidden = torch.randn(1, T, 1024, requires_grad=True)
    ins = [hidden, *m.parameters()]
    hf_forward = getattr(m, "torch_forward", m.forward)  # transformers < 5 named the CPU path torch_forward
    ref = time_fwd_bwd(lambda: hf_forward(hidden), ins, reps=reps)
    ours = time_fwd_bwd(lambda: mixer_via_ops(m, hidden), ins, reps=reps)
    err = ((ours[2] - ref[2]).abs().max() / ref[2].abs().max()).item()
    return ref, ours, err


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=["gla", "gdn", "ssd"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore")

    load_before = os.getloadavg()[0]
    rows = []
    if args.only in (None, "gla"):
        ref, ours, err = bench_gla(args.seq_len, args.reps)
        rows.append(("GLA B=1 H=4 K=128 V=256", "fla naive_recurrent_gla", "chunk_gla_torch", ref, ours, err))
    if args.only in (None, "gdn"):
        ref, ours, err = bench_gdn(args.seq_len, args.reps)
        rows.append(("Gated DeltaNet B=1 H=4 K=128 V=256", "fla naive_recurrent_gated_delta_rule",
                     "chunk_gated_delta_rule_torch", ref, ours, err))
    if args.only in (None, "ssd"):
        ref, ours, err = bench_ssd(args.seq_len, args.reps)
        rows.append(("Mamba2 mixer d=1024 h=32 p=64 n=128", "transformers Mamba2Mixer",
                     "ops (conv + ssd_scan_torch)", ref, ours, err))

    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, T={args.seq_len}, median of {args.reps} reps (fwd+bwd); "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
          "(other processes on the cores slow the token loop far more than the chunked path)")
    head = ("case", "reference", "ref fwd+bwd s", "ours", "ours fwd+bwd s", "speed-up", "max rel diff")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for case, rname, oname, ref, ours, err in rows:
        rt, ot = ref[0] + ref[1], ours[0] + ours[1]
        print(f"| {case} | {rname} | {rt:.3f} ({ref[0]:.3f} + {ref[1]:.3f}) | {oname} | "
              f"{ot:.3f} ({ours[0]:.3f} + {ours[1]:.3f}) | {rt / ot:.1f}x | {err:.1e} |")


if __name__ == "__main__":
    main()
