"""Wall time and peak RSS of tools/reshard_expand.py on 1.3B-shaped checkpoints, against `cp -r`.

The copy is timed twice: as it returns (its data still in the page cache) and with the `sync` that
makes it durable; the tool is timed the same two ways, each run starting after a `sync`. Python + torch
start-up is shown apart, and the disk's write bandwidth (`dd ... conv=fsync` of the largest source file)
beside the tool's GB/s.

Builds a GLA-1.3B-shaped (fla format) and a Mamba2-1.3B-shaped (transformers format) checkpoint with
random bf16 weights in model.safetensors, then for each runs, in the same process tree and with the same
warm page cache, `cp -r SRC COPY` and `reshard_expand.py --src SRC --dst DST --tp 2 --pp 2
--expand-every 6` (GLA merged to 1 head, Mamba2 d_state 128 -> 512). Prints a table; goals: wall time
<= 2x the copy, peak RSS <= 1.5 GB. `--also DIR` times the tool of another checkout in the same run
(before / after a change; repeatable); `--breakdown` adds the CPU seconds of each stage of the work on one
thread: mapping the source, reading it (pread; the dim-1 TP splits' columns gathered), writing to the page
cache, the manifest digest (XXH3-128).

    .venv/bin/python benchmarks/reshard.py [--workdir /tmp/statex-reshard-bench] [--only gla|mamba2]
                                           [--also DIR] [--breakdown]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from statex_dist.checkpoint.atomic import new_digest  # noqa: E402
from statex_dist.archs.gla.fla_format import FlaGLA  # noqa: E402
from statex_dist.checkpoint.hf_export import write_hf  # noqa: E402
from statex_dist.checkpoint.stream_writer import BLOCK_BYTES, file_bytes  # noqa: E402
from statex_dist.archs.mamba2.transformers_format import TransformersMamba2  # noqa: E402
from statex_dist.checkpoint.hf_load import checkpoint_shape  # noqa: E402
from statex_dist.archs.gla.config import GLAConfig  # noqa: E402
from statex_dist.archs.mamba2.config import Mamba2Config  # noqa: E402
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


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float, float]:
    """Wall seconds, the child's peak RSS in GB and its CPU seconds (user + system: what a loaded machine
    does not change much), from the rusage of a fresh wrapper process."""
    wrapper = [sys.executable, "-c",
               "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
               "print(u.ru_maxrss, u.ru_utime + u.ru_stime); sys.exit(r.returncode)", *cmd]
    t0 = time.perf_counter()
    out = subprocess.run(wrapper, capture_output=True, text=True, env=env)
    secs = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"{cmd} failed:\n{out.stdout}\n{out.stderr}")
    rss, cpu = out.stdout.strip().splitlines()[-1].split()
    return secs, int(rss) / 1e6, float(cpu)


def write_bandwidth(src: Path, work: Path) -> float:
    """GB/s of writing the largest source file to a new one and fsync-ing it (the cache is warm: disk only)."""
    big = max(src.iterdir(), key=lambda p: p.stat().st_size)
    subprocess.run(["sync"], check=True)
    secs, _, _ = timed(["dd", f"if={big}", f"of={work / 'dd.tmp'}", "bs=16M", "conv=fsync", "status=none"])
    (work / "dd.tmp").unlink()
    return big.stat().st_size / secs / 1e9


def breakdown(src_folder: Path, out: Path, tp: int = 2) -> dict:
    """CPU seconds of each stage of a reshard to ``tp`` on one thread (no expansion), in the writer's order:
    map each source tensor, read its bytes (pread into the writer's buffer, gathering the dim-1 TP slices'
    columns), write every output byte to the page cache, then hash it for the manifest."""
    from statex_dist.checkpoint.sources import open_source
    from statex_dist.checkpoint.stream_writer import read_bytes
    from statex_dist.checkpoint.tensor_files import file_location
    src = open_source(src_folder)
    specs = specs_for(src.config, tp)
    cpu = dict.fromkeys(("map", "read", "write", "hash"), 0.0)

    def clock(stage, fn, *a):
        t = time.process_time()
        r = fn(*a)
        cpu[stage] += time.process_time() - t
        return r

    digest = new_digest()
    block, staging = (torch.empty(BLOCK_BYTES, dtype=torch.uint8) for _ in range(2))
    with open(out, "wb") as fh:
        for name, spec in specs.items():
            full = spec.pad_rows(clock("map", src.get, name))
            for r in range(tp):
                for piece in spec.shard_pieces(full, r, tp, name):
                    loc = file_location(piece)
                    chunks = read_bytes(piece, *loc, block, staging) if loc else file_bytes(piece, block)
                    while (data := clock("read", next, chunks, None)) is not None:
                        clock("write", fh.write, data)
                        clock("hash", digest.update, data)
    out.unlink()
    return {k: round(v, 2) for k, v in cpu.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/statex-reshard-bench")
    ap.add_argument("--only", choices=["gla", "mamba2"])
    ap.add_argument("--also", metavar="DIR", action="append", default=[],
                    help="another checkout whose tool is timed in the same run (repeatable)")
    ap.add_argument("--breakdown", action="store_true", help="CPU seconds of each stage, done alone")
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
        subprocess.run(["sync"], check=True)
        t_cp, _, cpu_cp = timed(["cp", "-r", str(src), str(work / f"{arch}-copy")])
        t_sync, _, _ = timed(["sync"])
        t_imp, _, _ = timed([sys.executable, "-c", "import statex_dist.reshard"])
        disk = write_bandwidth(src, work)
        tools = [(f" ({Path(d).name})", Path(d).resolve()) for d in args.also] + [("", ROOT)]
        for label, root in tools:
            shutil.rmtree(work / f"{arch}-out", ignore_errors=True)
            subprocess.run(["sync"], check=True)
            env = dict(os.environ, PYTHONPATH=str(root))  # ahead of the editable install of this checkout
            tool = [sys.executable, str(root / "tools" / "reshard_expand.py"), "--src", str(src), "--dst",
                    str(work / f"{arch}-out"), "--tp", "2", "--pp", "2", "--expand-every", "6", *extra]
            t_rs, rss, cpu_rs = timed(tool, env)
            t_sync2, _, _ = timed(["sync"])
            rows.append(dict(arch=arch + label, gb=round(size, 3), cp_s=round(t_cp, 2),
                             cp_sync_s=round(t_cp + t_sync, 2), reshard_s=round(t_rs, 2),
                             reshard_sync_s=round(t_rs + t_sync2, 2), import_s=round(t_imp, 2),
                             ratio=round(t_rs / t_cp, 2), ratio_synced=round((t_rs + t_sync2) / (t_cp + t_sync), 2),
                             peak_rss_gb=round(rss, 2), gb_s=round(size / t_rs, 2),
                             gb_s_synced=round(size / (t_rs + t_sync2), 2), disk_gb_s=round(disk, 2),
                             cp_cpu_s=round(cpu_cp, 2), reshard_cpu_s=round(cpu_rs, 2),
                             load=round(os.getloadavg()[0], 1)))
        if args.breakdown:
            rows[-1]["cpu_s"] = breakdown(src, work / f"{arch}-breakdown.tmp")
        for d in ("copy", "out"):
            shutil.rmtree(work / f"{arch}-{d}", ignore_errors=True)
    print(f"{'model':<17}{'size GB':>8}{'cp -r s':>8}{'tool s':>8}{'ratio':>7}{'cp+sync s':>10}{'tool+sync s':>12}"
          f"{'ratio':>7}{'import s':>9}{'RSS GB':>7}{'tool GB/s':>10}{'+sync':>7}{'disk GB/s':>10}{'CPU s cp':>9}"
          f"{'tool':>6}{'load':>6}")
    for r in rows:
        print(f"{r['arch']:<17}{r['gb']:>8}{r['cp_s']:>8}{r['reshard_s']:>8}{r['ratio']:>7}{r['cp_sync_s']:>10}"
              f"{r['reshard_sync_s']:>12}{r['ratio_synced']:>7}{r['import_s']:>9}{r['peak_rss_gb']:>7}"
              f"{r['gb_s']:>10}{r['gb_s_synced']:>7}{r['disk_gb_s']:>10}{r['cp_cpu_s']:>9}{r['reshard_cpu_s']:>6}"
              f"{r['load']:>6}")
        if "cpu_s" in r:
            print(f"  CPU s of each stage alone: {r['cpu_s']}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
