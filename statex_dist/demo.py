"""The main job on the embedded default, runnable on a fresh CPU machine.

Until the training loop lands this builds the tiny GLA and Mamba2 models in debug mode (a world of
one), runs them forward on generated tokens and prints their size, state size and loss.
"""
from __future__ import annotations

import argparse
import time

import torch

from statex_dist.config import GLAConfig, Mamba2Config
from statex_dist.models import build_model


def tiny(arch: str):
    if arch == "gla":
        return GLAConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, use_short_conv=True,
                         tie_word_embeddings=True)
    return Mamba2Config(vocab_size=256, hidden_size=64, num_layers=2, d_state=16, headdim=16,
                        chunk_size=64, tie_word_embeddings=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", choices=["gla", "mamba2"], default="gla")
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    cfg = tiny(args.arch)
    model = build_model(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, args.seq_len))
    t0 = time.time()
    with torch.no_grad():
        logits = model(ids)
        loss = model(ids[:, :-1], labels=ids[:, 1:])
    params = sum(p.numel() for p in model.parameters())
    state = sum(cfg.state_size(i) for i in range(cfg.num_layers))
    print(f"{args.arch}: {params:,} parameters, recurrent state {state:,} floats, logits {list(logits.shape)}, "
          f"loss {loss.item():.3f} (random init), {time.time() - t0:.2f}s")


if __name__ == "__main__":
    main()
