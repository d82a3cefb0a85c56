"""Training-step throughput on the CPU: this project's GLA and Mamba2 against the libraries' own models.

Same process, same sizes (~10M parameters), same data, a plain torch AdamW loop around each: forward,
cross entropy, backward, optimizer step. fla's GLAForCausalLM runs with its CPU fallbacks (its Triton
kernels swapped for fla's own naive_recurrent_gla and reference norms); transformers' Mamba2ForCausalLM
uses its pure-PyTorch path. Prints tokens/s and the ratio (goal >= 1.0x).

    .venv/bin/python benchmarks/train_cpu.py [--seq-len 512] [--batch 4] [--steps 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from statex_dist.archs.gla.config import GLAConfig  # noqa: E402
from statex_dist.archs.mamba2.config import Mamba2Config  # noqa: E402
from statex_dist.models import build_model  # noqa: E402

VOCAB, HIDDEN, LAYERS = 8192, 256, 8


def time_steps(step, steps: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def loop(model, ids, labels, logits_of):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = logits_of(model, ids)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1))
        loss.backward()
        opt.step()
    return step


def ours_step(model, ids, labels):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        model(ids, labels=labels).backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    B, T = args.batch, args.seq_len
    ids = torch.randint(0, VOCAB, (B, T))
    labels = torch.randint(0, VOCAB, (B, T))
    rows = []

    # GLA: ours vs fla's GLAForCausalLM with CPU fallbacks
    from fla.models import GLAConfig as FlaConfig
    from fla.models import GLAForCausalLM as FlaGLA

    from tests.fla_reference import fla_on_cpu
    ours = build_model(GLAConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=4,
                                 use_short_conv=True, tie_word_embeddings=False)).train()
    ref = FlaGLA(FlaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_heads=4,
                           use_short_conv=True, fuse_swiglu=False, fuse_cross_entropy=False, fuse_norm=True))
    n = sum(p.numel() for p in ours.parameters())
    t_ours = time_steps(ours_step(ours, ids, labels), args.steps)
    with fla_on_cpu():
        t_ref = time_steps(loop(ref, ids, labels, lambda m, x: m(x).logits), args.steps)
    rows.append(("GLA", n, t_ours, t_ref, "fla GLAForCausalLM (naive_recurrent_gla)"))

    # Mamba2: ours vs transformers' Mamba2ForCausalLM (pure-PyTorch path)
    from transformers import Mamba2Config as HFConfig
    from transformers import Mamba2ForCausalLM as HFMamba2
    ours = build_model(Mamba2Config(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=LAYERS, d_state=64,
                                    headdim=32, ngroups=1, chunk_size=128, tie_word_embeddings=True)).train()
    ref = HFMamba2(HFConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, state_size=64,
                            head_dim=32, num_heads=2 * HIDDEN // 32, n_groups=1, expand=2, chunk_size=128,
                            tie_word_embeddings=True)).train()
    n = sum(p.numel() for p in ours.parameters())
    t_ours = time_steps(ours_step(ours, ids, labels), args.steps)
    t_ref = time_steps(loop(ref, ids, labels, lambda m, x: m(x).logits), args.steps)
    rows.append(("Mamba2", n, t_ours, t_ref, "transformers Mamba2ForCausalLM (torch path)"))

    tok = B * T
    print(f"B={B} T={T}, {args.threads} threads, torch {torch.__version__}")
    print(f"{'model':<8}{'params':>12}{'ours tok/s':>12}{'ref tok/s':>11}{'ratio':>8}  reference")
    for name, n, to, tr, what in rows:
        print(f"{name:<8}{n:>12,}{tok / to:>12,.0f}{tok / tr:>11,.0f}{tr / to:>7.1f}x  {what}")


if __name__ == "__main__":
    main()
