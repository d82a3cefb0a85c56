"""What context parallelism (parallel.cp, statex_dist/parallel/context.py) buys: memory and time per rank of a
training step at CP = 1, 2, 4, at the real widths of GLA-340M and Mamba2-370m (hidden 1024, the real
vocabularies) with fewer layers, and what each CP exchange moves.

Every point is the training job as users start it (``python -m statex_dist.train`` at CP=1, ``launch/train.sh``
with NPROC=cp otherwise), fp32 on the CPU, one sequence a step (micro-batch 1, DP=1), ``--steps`` steps, with
``STATEX_MEMORY_REPORT`` (statex_dist/training/memory_report.py): per rank the last step's peak RSS above the
libraries, the most bytes autograd saved for backward at once (``act``), and the step's seconds.

- strong scaling: one global T (``--seqs``), split over CP = 1, 2, 4;
- weak scaling: the longest T per rank that fits ``--cap`` MB above the libraries, found from the measured
  bytes per token (the step peak is linear in T: fixed state + act per token);
- the exchange: per layer and sequence, what each rank sends forward (its segment's final state and its
  transition, the short convolutions' last W - 1 inputs) and what the backward all-reduce moves, computed
  from the config (every byte the all-gathers of statex_dist.parallel.context carry);
- a model, not a measurement: the longest trainable context of GLA-1.3B and Mamba2-1.3B in bf16 on 80 GB
  GPUs at CP = 1, 2, 8, 16, from the measured activation bytes per token and layer scaled to their width.

The 2 CPU cores of this machine run CP=4's four ranks two to a core: times are the machine's, for ratios
within one table only.

    .venv/bin/python benchmarks/context_parallel.py [--archs gla mamba2] [--layers 4] [--seqs 4096 8192]
        [--cps 1 2 4] [--cap 8000] [--quick]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.memory import REAL, launch   # noqa: E402  (the same job launcher and real shapes)

MB = 1e6
GB = 1e9
# the 1.3B models of the modelled table: fla-hub's GLA-1.3B and state-spaces' mamba2-1.3b
LARGE = {"gla": dict(hidden_size=2048, num_layers=24, vocab_size=32000, num_heads=4),
         "mamba2": dict(hidden_size=2048, num_layers=48, vocab_size=50288)}
LARGE_PARAMS = {"gla": 1.3e9, "mamba2": 1.3e9}


def model_config(arch: str, layers: int, quick: bool) -> dict:
    cfg = dict(REAL[arch], num_layers=layers)
    if quick:
        cfg.update(hidden_size=128, vocab_size=512)
        if arch == "mamba2":
            cfg.update(d_state=16, headdim=32, chunk_size=32)
    return cfg


def exchange_bytes(cfg: dict, tp: int = 1) -> dict:
    """Bytes one rank sends per layer and sequence in the forward all-gathers (fp32 state and transition,
    conv tails at 4 bytes an fp32 activation); the backward all-reduce moves cp times that per rank."""
    from statex_dist.models.config import config_from_dict
    c = config_from_dict(cfg)
    state = c.state_size(0) // tp
    if cfg["arch"] == "gla":
        heads, dk = c.num_heads[0], c.key_dim // c.num_heads[0]
        transition = heads * dk   # a decay per key channel
        conv = (2 * c.key_dim + c.value_dim) * (c.conv_size - 1) if c.use_short_conv else 0
    else:
        transition = c.nheads     # a scalar a head
        conv = (c.d_inner + 2 * c.ngroups * c.d_state[0]) * (c.d_conv - 1)
    return {"state": 4 * state, "transition": 4 * transition, "conv": 4 * conv // tp,
            "total": 4 * (state + transition + conv // tp)}


def command(arch, cfg, cp, T, shards, run_dir, steps):
    over = {"model.source": "scratch", "model.config": json.dumps(cfg), "model.dtype": "fp32",
            "expansion.enabled": "false", "parallel.device": "cpu", "parallel.cp": cp, "data.train": shards,
            "data.seq_len": T, "data.micro_batch": 1, "data.global_batch": 1, "data.workers": 0,
            "data.shuffle_buffer": 0, "schedule.total_steps": steps, "schedule.warmup_steps": 1,
            "logging.dir": run_dir, "logging.every": 1000, "eval.tasks": "[]", "checkpoint.every": 0,
            "checkpoint.resume": "none", "seed": 0}
    args = [f"{k}={v}" for k, v in over.items()]
    config = str(ROOT / "configs" / f"cpu-{arch}-tiny.yaml")
    if cp == 1:
        return [sys.executable, "-m", "statex_dist.train", config, *args], {}
    from statex_dist.parallel.rendezvous import free_port
    return (["bash", str(ROOT / "launch" / "train.sh"), config, *args],
            {"NPROC": str(cp), "PYTHON": sys.executable, "MASTER_PORT": str(free_port())})


def measure(report: Path) -> dict:
    """The worst rank's last-step peak above the libraries, its saved activations and the step's seconds."""
    rows = []
    for f in sorted(report.glob("rank*.json")):
        m = json.loads(f.read_text())
        steps = [p for p in m["phases"].values() if p["kind"] == "step"]
        libs = m["points"]["libraries"]["rss"]
        rows.append({"peak": steps[-1]["peak"] - libs, "act": max(p.get("activations_saved_peak", 0) for p in steps),
                     "seconds": steps[-1]["seconds"]})
    return max(rows, key=lambda r: r["peak"]) | {"ranks": len(rows)}


def modelled(per_token_layer: dict, cps=(1, 2, 8, 16)) -> str:
    """The longest context one 80 GB GPU a CP rank trains, bf16, for the 1.3B models: (80 GB - 18 B/param of
    weights, grads, fp32 master and moments with the optimizer state divided over 8 DP x CP ranks) / the
    activation bytes a token and layer (measured in fp32 at hidden 1024; x 2 for hidden 2048, / 2 for bf16)."""
    out = ["| model (bf16, 80 GB a GPU, a model) | activation KB a token | " +
           " | ".join(f"CP={c}" for c in cps) + " |", "|---" * (2 + len(cps)) + "|"]
    for arch, per in per_token_layer.items():
        big = LARGE[arch]
        per_token = per * (big["hidden_size"] / 1024) / 2 * big["num_layers"]
        static = LARGE_PARAMS[arch] * (2 + 4 + 12 / 8)
        free = 80 * GB - static
        cells = [f"{int(free / per_token * c / 1024):,}K" for c in cps]
        out.append(f"| {arch} 1.3B ({big['num_layers']} layers, hidden {big['hidden_size']}) | "
                   f"{per_token / 1e3:,.0f} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=["gla", "mamba2"], choices=list(REAL))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seqs", nargs="+", type=int, default=[4096, 8192], help="global sequence lengths")
    ap.add_argument("--cps", nargs="+", type=int, default=[1, 2, 4])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--cap", type=float, default=8000, help="MB a rank may use above the libraries (weak scaling)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    ap.add_argument("--quick", action="store_true", help="smoke size: hidden 128, vocab 512, 2 layers, T 256")
    ap.add_argument("--work", default=None, help="runs and data (default runs/context_parallel[-quick])")
    ap.add_argument("--out", default=None, help="results stem (default benchmarks/results/context_parallel[-quick])")
    a = ap.parse_args(argv)
    if a.quick:
        a.layers, a.seqs = 2, [256]
    suffix = "-quick" if a.quick else ""
    work = Path(a.work or ROOT / "runs" / f"context_parallel{suffix}")
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"context_parallel{suffix}")
    from tests.train_helpers import make_shards

    rows, t0 = [], time.time()
    points = [(arch, T, cp) for arch in a.archs for T in a.seqs for cp in a.cps if T % cp == 0]
    for i, (arch, T, cp) in enumerate(points, 1):
        cfg = model_config(arch, a.layers, a.quick)
        shards = make_shards(work / f"data-seq{T}", seq_len=T, samples_per_shard=4)
        run_dir = work / f"{arch}-T{T}-cp{cp}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        cmd, env = command(arch, cfg, cp, T, shards, run_dir, a.steps)
        launch(cmd, env, run_dir / "mem", run_dir / "train.log", a.timeout)
        m = measure(run_dir / "mem")
        row = {"arch": arch, "T": T, "cp": cp, "T_rank": T // cp, **m, "exchange": exchange_bytes(cfg)}
        rows.append(row)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        print(f"[{i}/{len(points)}] {arch} T={T} CP={cp}: peak {m['peak'] / MB:,.0f} MB above libs, act "
              f"{m['act'] / MB:,.0f} MB, step {m['seconds']:.1f} s", flush=True)

    strong = ["| arch | global T | CP | T a rank | peak MB a rank (above libraries) | saved activations MB | "
              "step s | us a token | peak vs CP=1 | time vs CP=1 |", "|---" * 10 + "|"]
    base = {(r["arch"], r["T"]): r for r in rows if r["cp"] == 1}
    for r in rows:
        b = base.get((r["arch"], r["T"]))
        strong.append(f"| {r['arch']} | {r['T']:,} | {r['cp']} | {r['T_rank']:,} | {r['peak'] / MB:,.0f} | "
                      f"{r['act'] / MB:,.0f} | {r['seconds']:.1f} | {r['seconds'] / r['T'] * 1e6:,.0f} | "
                      + (f"{r['peak'] / b['peak']:.2f} | {r['seconds'] / b['seconds']:.2f} |" if b else "| |"))
    # weak scaling: peak = fixed + per_token * T_rank, fitted per arch over its points
    weak, per_token_layer = ["| arch | MB a token a rank | fixed MB | longest T a rank within the cap | "
                             "longest global T at CP=1 / 2 / 4 |", "|---" * 5 + "|"], {}
    for arch in a.archs:
        pts = [(r["T_rank"], r["peak"]) for r in rows if r["arch"] == arch]
        if len({t for t, _ in pts}) < 2:
            continue
        n = len(pts)
        mt, mp = sum(t for t, _ in pts) / n, sum(p for _, p in pts) / n
        slope = sum((t - mt) * (p - mp) for t, p in pts) / sum((t - mt) ** 2 for t, _ in pts)
        fixed = mp - slope * mt
        longest = int((a.cap * MB - fixed) / slope)
        weak.append(f"| {arch} | {slope / MB:.3f} | {fixed / MB:,.0f} | {longest:,} | "
                    + " / ".join(f"{longest * c:,}" for c in (1, 2, 4)) + " |")
        acts = [r["act"] / r["T_rank"] / a.layers for r in rows if r["arch"] == arch]
        per_token_layer[arch] = max(acts)
    exch = ["| arch | state B | transition B | conv tails B | sent a layer a sequence | forward all-gather "
            "received at CP=4 |", "|---" * 6 + "|"]
    for arch in a.archs:
        e = exchange_bytes(model_config(arch, a.layers, a.quick))
        exch.append(f"| {arch} | {e['state']:,} | {e['transition']:,} | {e['conv']:,} | {e['total']:,} | "
                    f"{4 * e['total']:,} |")
    md = "\n\n".join(["## Strong scaling", "\n".join(strong), f"## Weak scaling (cap {a.cap:,.0f} MB a rank)",
                      "\n".join(weak), "## The exchange, per layer and sequence (fp32)", "\n".join(exch),
                      "## A model: the longest trainable context of the 1.3B models", modelled(per_token_layer)
                      if per_token_layer and not a.quick else "(not at --quick sizes)"])
    print(md)
    out.parent.mkdir(parents=True, exist_ok=True)
    setup = f"{a.layers} layers, {'quick' if a.quick else 'hidden 1024, real vocabularies'}, fp32, CPU"
    out.with_suffix(".md").write_text(f"# Context parallelism ({setup})\n\n{md}\n")
    out.with_suffix(".json").write_text(json.dumps({"setup": vars(a), "rows": rows}, indent=1, default=str))
    print(f"context_parallel: {len(rows)} runs in {time.time() - t0:.0f}s; {out.with_suffix('.md')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
