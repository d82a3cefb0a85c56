"""The main job on a tiny model, end to end on this machine's CPU in a few minutes:

generated corpus -> webdataset shards (tools/make_shards.py) -> tiny model -> StateX expansion ->
post-training through a real DeepSpeed engine -> checkpoint (sharded format) -> evaluation before and
after -> a table of state size, parameters and held-out perplexity, and where the logs went.

    bash launch/train.sh [--arch gla|mamba2] [--steps N] [--out runs/demo]
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def make_data(out: Path, seq_len: int) -> tuple[Path, Path]:
    from statex_dist.data.synthetic import write_corpus
    shards = {}
    for split, files, seed in (("train", 6, 0), ("valid", 1, 99)):
        folder = out / "data" / f"{split}-{seq_len}"
        if not (folder / "manifest.json").exists():
            write_corpus(out / "data" / f"corpus-{split}", n_files=files, docs_per_file=120, seed=seed)
            subprocess.run([sys.executable, str(ROOT / "tools" / "make_shards.py"), str(out / "data" / f"corpus-{split}"),
                            "-o", str(folder), "--tokenizer", "bytes", "--seq-len", str(seq_len),
                            "--samples-per-shard", "64", "--quiet", "--overwrite"], check=True)
        shards[split] = folder
    return shards["train"], shards["valid"]


@torch.no_grad()
def perplexity(model, shards: Path, batches: int = 8) -> float:
    from statex_dist.data import build_loader
    model.eval()
    total, n = 0.0, 0
    loader = build_loader(shards, dp_rank=0, dp_size=1, micro_batch=4, seed=0, workers=0, shuffle_buffer=1,
                          epochs=1)
    for i, b in enumerate(loader):
        if i == batches:
            break
        tokens = b["labels"].numel()
        total += model(b["input_ids"], labels=b["labels"]).item() * tokens
        n += tokens
    model.train()
    return math.exp(total / max(n, 1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=["gla", "mamba2"], default="gla")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--out", default="runs/demo")
    args = ap.parse_args(argv)
    t0 = time.time()
    out = Path(args.out) / args.arch
    train, valid = make_data(Path(args.out), seq_len=128)

    from statex_dist.models import build_model
    from statex_dist.run_config import load_run_config
    from statex_dist.statex import count_params, state_floats
    from statex_dist.train import Run
    from statex_dist.training.initial_weights import fill
    cfg = load_run_config(ROOT / "configs" / f"cpu-{args.arch}-tiny.yaml", [
        f"data.train={train}", f"data.valid={valid}", f"logging.dir={out}", f"checkpoint.dir={out / 'checkpoints'}",
        "checkpoint.resume=none", f"schedule.total_steps={args.steps}", f"checkpoint.every={args.steps}",
        f"logging.every={max(1, args.steps // 6)}"])
    run = Run(cfg)
    base_cfg = run.source.base_config
    before = build_model(base_cfg, init=False)
    import dataclasses
    fill(before, dataclasses.replace(run.source, config=base_cfg,
                                     get=_unexpanded_getter(cfg, base_cfg)), 0, 1)
    ppl_before = perplexity(before, valid)
    expanded_model = run.module
    ppl_expanded = perplexity(expanded_model, valid)
    result = run.train()
    ppl_after = perplexity(run.module, valid)
    ckpt = out / "checkpoints" / f"step{args.steps:08d}"
    rows = [("", "before", "expanded", "after post-training"),
            ("recurrent state (floats/seq)", f"{state_floats(base_cfg):,}", f"{state_floats(run.model_config):,}",
             f"{state_floats(run.model_config):,}"),
            ("parameters", f"{count_params(base_cfg):,}", f"{count_params(run.model_config):,}",
             f"{count_params(run.model_config):,}"),
            ("held-out perplexity", f"{ppl_before:.2f}", f"{ppl_expanded:.2f}", f"{ppl_after:.2f}")]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    print()
    for r in rows:
        print("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)))
    print(f"\n{args.arch}: {result['step']} steps ({run.source.description}), loss {result['losses'][0]:.3f} -> "
          f"{result['losses'][-1]:.3f} in {time.time() - t0:.0f}s; tensorboard: {out}; checkpoint: {ckpt} "
          f"(weights: {ckpt / 'model'})")
    return 0


def _unexpanded_getter(cfg, base_cfg):
    """The same initial weights without the expansion (the model StateX starts from)."""
    import copy

    from statex_dist.training.initial_weights import weight_source
    plain = copy.deepcopy(cfg)
    plain.expansion.enabled = False
    return weight_source(plain).get


if __name__ == "__main__":
    sys.exit(main())
