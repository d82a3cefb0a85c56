"""The paper's claim in miniature: StateX against LPT (the same post-training, no expansion) on the tiny models.

For each architecture and seed, the tiny model pretrained with that seed (the embedded one for its seed; others
are pretrained by tools/pretrain_tiny.py on first use and cached under runs/pretrained/) is post-trained twice by
the main job (statex_dist.demo): once with StateX, once without (--lpt), with the same steps, data, order and
learning rate. Reported: MQAR accuracy per number of pairs and held-out perplexity, mean and spread (sample
standard deviation) over seeds, as a markdown table, a JSON file and a plot.

    python benchmarks/statex_vs_lpt.py                       # gla and mamba2, seeds 0 1 2, 1500 steps
    python benchmarks/statex_vs_lpt.py --archs gla --seeds 0 1 --steps 200 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from statex_dist.tiny import PAIRS  # noqa: E402  (after the path: runs from a checkout)


def _run(cmd: list[str], log: Path) -> None:
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT,
                           env=dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1"))
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}); see {log}")


def pretrained(arch: str, seed: int, out: Path) -> Path:
    """The tiny model pretrained with ``seed``: one ships; others rerun the shipped one's recorded commands
    (a chain of them when it continued an earlier run: each stage starts from the previous stage's output)."""
    from statex_dist.tiny import pretrained_path
    path = pretrained_path(arch, seed)
    if not (path / "config.json").exists():
        chain, rec = [], json.loads((pretrained_path(arch) / "pretrain.json").read_text())
        while rec:
            chain.insert(0, rec["argv"])
            rec = rec.get("continues")
        prev = None
        for i, argv in enumerate(chain):
            drop = ("--seed", "--out", "--init-from")
            keep = [a for j, a in enumerate(argv) if a not in drop and (j == 0 or argv[j - 1] not in drop)]
            dst = path if i == len(chain) - 1 else path.with_name(f"{path.name}-stage{i}")
            _run([sys.executable, "tools/pretrain_tiny.py", *keep, "--seed", str(seed), "--out", str(dst)]
                 + (["--init-from", str(prev)] if prev else []), out / f"pretrain-{arch}-seed{seed}-{i}.log")
            prev = dst
    return path


def make_data(arch: str, seed: int, steps: int, out: Path) -> None:
    """The shards both arms of a seed read, made once before they start (not by two runs at once)."""
    from statex_dist.demo import run_data
    run_data(arch, out / f"{arch}-seed{seed}", steps, seed)


def post_train(arch: str, seed: int, arm: str, steps: int, out: Path, source: Path) -> dict:
    res = out / f"{arch}-seed{seed}-{arm}.json"
    if not res.exists():
        _run([sys.executable, "-m", "statex_dist.demo", "--arch", arch, "--source", str(source), "--seed", str(seed),
              "--steps", str(steps), "--threads", "1", "--out", str(out / f"{arch}-seed{seed}"), "--json", str(res)]
             + (["--lpt"] if arm == "lpt" else []), out / f"{arch}-seed{seed}-{arm}.log")
    return json.loads(res.read_text())


def _stats(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarise(results: dict, archs, seeds) -> tuple[str, dict]:
    """Markdown table and {arch: {row: {N or 'ppl': (mean, sd)}}}."""
    agg, lines = {}, []
    head = "| model | run | " + " | ".join(f"N={n}" for n in PAIRS) + " | ppl | state (floats) |"
    lines += [head, "|" + "---|" * (len(PAIRS) + 4)]
    for arch in archs:
        agg[arch] = {}
        rows = {"pretrained": [(results[(arch, s, "lpt")], "pretrained") for s in seeds],
                "LPT": [(results[(arch, s, "lpt")], "LPT") for s in seeds],
                "StateX": [(results[(arch, s, "statex")], "StateX") for s in seeds]}
        for row, items in rows.items():
            cells = {N: _stats([r["runs"][k]["mqar"][str(N)] for r, k in items]) for N in PAIRS}
            cells["ppl"] = _stats([r["runs"][k]["ppl"]["ppl"] for r, k in items])
            agg[arch][row] = cells
            state = items[0][0]["state"]["after" if row == "StateX" else "before"]
            lines.append(f"| {arch} | {row} | " + " | ".join(f"{cells[N][0]:.3f} ± {cells[N][1]:.3f}" for N in PAIRS)
                         + f" | {cells['ppl'][0]:.3f} ± {cells['ppl'][1]:.3f} | {state:,} |")
    lines += ["", "StateX - LPT, paired by seed:", "",
              "| model | seed | " + " | ".join(f"N={n}" for n in PAIRS) + " | ppl ratio |", "|" + "---|" * (len(PAIRS) + 3)]
    for arch in archs:
        for s in seeds:
            x, y = results[(arch, s, "statex")]["runs"]["StateX"], results[(arch, s, "lpt")]["runs"]["LPT"]
            lines.append(f"| {arch} | {s} | " + " | ".join(f"{x['mqar'][str(N)] - y['mqar'][str(N)]:+.3f}" for N in PAIRS)
                         + f" | {x['ppl']['ppl'] / y['ppl']['ppl']:.3f} |")
    return "\n".join(lines), agg


def plot(agg: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(agg), figsize=(5 * len(agg), 3.6), squeeze=False)
    for ax, (arch, rows) in zip(axes[0], agg.items()):
        for row, cells in rows.items():
            ax.errorbar(PAIRS, [cells[N][0] for N in PAIRS], yerr=[cells[N][1] for N in PAIRS], marker="o",
                        capsize=3, label=row)
        ax.set_xscale("log", base=2)
        ax.set_xticks(PAIRS, [str(n) for n in PAIRS])
        ax.set_xlabel("key-value pairs (N)")
        ax.set_ylabel("MQAR accuracy")
        ax.set_title(f"tiny {arch}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=["gla", "mamba2"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1500, help="post-training steps per arm")
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each")
    ap.add_argument("--out", default="runs/statex_vs_lpt")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        srcs = dict(zip([(a, s) for a in args.archs for s in args.seeds], pool.map(
            lambda k: pretrained(k[0], k[1], out), [(a, s) for a in args.archs for s in args.seeds])))
        for a, s in srcs:
            make_data(a, s, args.steps, out)
        keys = [(a, s, arm) for a in args.archs for s in args.seeds for arm in ("statex", "lpt")]
        results = dict(zip(keys, pool.map(lambda k: post_train(*k, args.steps, out, srcs[k[:2]]), keys)))
    md, agg = summarise(results, args.archs, args.seeds)
    plot(agg, out / "statex_vs_lpt.png")
    (out / "statex_vs_lpt.md").write_text(md + "\n")
    (out / "statex_vs_lpt.json").write_text(json.dumps({a: {r: {str(k): v for k, v in c.items()} for r, c in rows.items()}
                                                        for a, rows in agg.items()}, indent=1) + "\n")
    print(md)
    verdicts = []
    for arch in args.archs:
        s, l = agg[arch]["StateX"], agg[arch]["LPT"]
        gap = statistics.mean(s[N][0] - l[N][0] for N in (32, 64))
        spread = max(s[N][1] + l[N][1] for N in (32, 64))
        dppl = s["ppl"][0] / l["ppl"][0] - 1
        verdicts.append(f"{arch}: StateX - LPT at N>=32 {gap:+.3f} (spread {spread:.3f}), ppl {dppl:+.1%}")
    print(f"\nstatex_vs_lpt: {len(args.seeds)} seeds x {len(args.archs)} models x 2 arms, {args.steps} steps each, "
          f"in {time.time() - t0:.0f}s; " + "; ".join(verdicts) + f"; table and plot in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
