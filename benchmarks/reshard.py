"""Wall time and peak RSS of tools/reshard_expand.py on 1.3B-shaped checkpoints, against `cp -r`.

The copy is timed twice: as it returns (its data still in the page cache) and with the `sync` that
makes it durable; the tool is timed the same two ways. Python + torch start-up is shown apart.

Builds a GLA-1.3B-shaped (fla format) and a Mamba2-1.3B-shaped (transformers format) checkpoint with
random bf16 weights in model.safetensors, then for each runs, in the same process tree and with the same
warm page cache, `cp -r SRC COPY` and `reshard_expand.py --src SRC --dst DST --tp 2 --pp 2
--expand-every 6` (GLA merged to 1 head, Mamba2 d_state 128 -> 512). Prints a table; goals: wall time
<= 2x the copy, peak RSS <= 1.5 GB.

    .venv/bin/python benchmarks/reshard.py [--workdir /tmp/statex-reshard-bench] [--only gla|mamba2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from statex_dist.checkpoint.fla_gla import FlaGLA  # noqa: E402
from statex_dist.checkpoint.hf_export import write_hf  # noqa: E402
from statex_dist.checkpoint.transformers_mamba2 import TransformersMamba2  # noqa: E402
from statex_dist.checkpoint.sources import checkpoint_shape  # noqa: E402
from statex_dist.config import GLAConfig, Mamba2Config  # noqa: E402
from statex_dist.models import specs_for  # noqa: E402

GLA_13B = GLAConfig(vocab_size=32000, hidden_size=2048, num_layers=24, num_heads=4, tie_word_embeddings=False)
MAMBA2_13B = Mamba2Config(vocab_size=50288, hidden_size=2048, num_layers=48, d_state=128, headdim=64,
                          ngroups=1, tie_word_embeddings=True)


def build(folder: Path, fmt, config) -> None:
    if (folder / "config.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    names = list(specs_for(config, 1))
    tensors = ((n, (torch.randn(checkpoint_shape(config, n), generator=gen) * 0.02).to(torch.bfloat16))
               for n in names)
    write_hf(folder, fmt, config, tensors, {n: torch.bfloat16 for n in names})


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and the child's peak RSS in GB (ru_maxrss of a fresh wrapper process)."""
    wrapper = [sys.executable, "-c",
               "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)", *cmd]
    t0 = time.perf_counter()
    out = subprocess.run(wrapper, capture_output=True, text=True)
    secs = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"{cmd} failed:\n{out.stdout}\n{out.stderr}")
    return secs, int(out.stdout.strip().splitlines()[-1]) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/statex-reshard-bench")
    ap.add_argument("--only", choices=["gla", "mamba2"])
    args = ap.parse_args()
    work = Path(args.workdir)
    rows = []
    cases = [("gla", FlaGLA, GLA_13B, ["--init", "merge"]), ("mamba2", TransformersMamba2, MAMBA2_13B, ["--d-state", "512"])]
    for arch, fmt, cfg, extra in cases:
        if args.only and arch != args.only:
            continue
        src = work / f"{arch}-1.3b"
        build(src, fmt, cfg)
        size = sum(p.stat().st_size for p in src.iterdir()) / 1e9
        subprocess.run(["cat", *map(str, src.iterdir())], stdout=subprocess.DEVNULL, check=True)  # warm the cache
        for d in ("copy", "out"):
            shutil.rmtree(work / f"{arch}-{d}", ignore_errors=True)
        t_cp, _ = timed(["cp", "-r", str(src), str(work / f"{arch}-copy")])
        t_sync, _ = timed(["sync"])
        t_imp, _ = timed([sys.executable, "-c", "import statex_dist.reshard"])
        t_rs, rss = timed([sys.executable, str(ROOT / "tools" / "reshard_expand.py"), "--src", str(src), "--dst",
                           str(work / f"{arch}-out"), "--tp", "2", "--pp", "2", "--expand-every", "6", *extra])
        t_sync2, _ = timed(["sync"])
        rows.append(dict(arch=arch, gb=round(size, 3), cp_s=round(t_cp, 2), cp_sync_s=round(t_cp + t_sync, 2),
                         reshard_s=round(t_rs, 2), reshard_sync_s=round(t_rs + t_sync2, 2), import_s=round(t_imp, 2),
                         ratio=round(t_rs / t_cp, 2), ratio_synced=round((t_rs + t_sync2) / (t_cp + t_sync), 2),
                         peak_rss_gb=round(rss, 2)))
        for d in ("copy", "out"):
            shutil.rmtree(work / f"{arch}-{d}", ignore_errors=True)
    print(f"{'model':<8}{'size GB':>9}{'cp -r s':>9}{'reshard s':>11}{'ratio':>7}{'cp+sync s':>11}"
          f"{'reshard+sync s':>16}{'ratio':>7}{'import s':>10}{'peak RSS GB':>13}")
    for r in rows:
        print(f"{r['arch']:<8}{r['gb']:>9}{r['cp_s']:>9}{r['reshard_s']:>11}{r['ratio']:>7}{r['cp_sync_s']:>11}"
              f"{r['reshard_sync_s']:>16}{r['ratio_synced']:>7}{r['import_s']:>10}{r['peak_rss_gb']:>13}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
