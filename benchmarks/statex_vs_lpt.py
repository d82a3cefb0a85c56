"""The paper's claim in miniature: StateX, in each of its init modes, against LPT (the same post-training, no
expansion) on the tiny models, over pretraining seeds.

For each architecture and seed, the tiny model pretrained with that seed (the embedded one for its seed; others
are pretrained by tools/pretrain_tiny.py on first use, rerunning the embedded model's recorded commands, and
cached under runs/pretrained/) is post-trained once per arm by the main job (statex_dist.demo): LPT, and StateX
with every init mode of the architecture (``archs.get(arch).expansion.modes``; the first is the paper's default),
all with the same steps, shards, order and learning rate. The learning rate, one per architecture for every
arm, is the best of ``--lrs`` for LPT on the first seed (mean MQAR accuracy at N = 32 and 64): the baseline gets
its best rate, and StateX is not tuned. Reported: MQAR accuracy per number of pairs and held-out perplexity,
mean and spread (sample standard deviation) over seeds, each mode's per-seed difference to LPT, as a markdown
table and a plot per run (``statex_vs_lpt-<archs>.md`` / ``.png``) and one JSON record per architecture in
``benchmarks/results/statex_vs_lpt.json`` (what the main job quotes).

    python benchmarks/statex_vs_lpt.py --archs mamba2           # seeds 0 1 2, 1000 steps, lrs 3e-3 1e-2 3e-2
    python benchmarks/statex_vs_lpt.py --archs gla --modes merge --lrs 2e-3 --seeds 0 1 --steps 200
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from statex_dist import archs  # noqa: E402  (after the path: runs from a checkout)
from statex_dist.tiny import PAIRS  # noqa: E402

JUDGED = (32, 64)   # where the tiny models' small states run out


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
    """The shards every arm of a seed reads, made once before they start (not by two runs at once)."""
    from statex_dist.demo import run_data
    run_data(arch, out / f"{arch}-seed{seed}", steps, seed)


def post_train(arch: str, seed: int, arm: str, lr: float, steps: int, out: Path, source: Path) -> dict:
    """One arm (``lpt`` or an init mode) of one seed at ``lr`` (cosine to lr/10); cached in its JSON."""
    tag = f"{arch}-seed{seed}-{arm}-lr{lr:g}"
    res = out / f"{tag}.json"
    if not res.exists():
        root = out / f"{arch}-seed{seed}"
        sets = [f"optimizer.lr={lr:g}", f"schedule.min_lr={lr / 10:g}",
                f"logging.dir={root / arch / tag}", f"checkpoint.dir={root / arch / tag / 'checkpoints'}"]
        if arm != "lpt":
            sets.append(f"expansion.init={arm}")
        gate_bias = archs.get(arch).tiny.init_options.get("gate_bias")
        if gate_bias and arm == "reinit":   # the new layer's gate bias drawn as pretraining drew it (GLA)
            sets.append(f"expansion.gate_bias_init=[{gate_bias[0]}, {gate_bias[1]}]")
        _run([sys.executable, "-m", "statex_dist.demo", "--arch", arch, "--source", str(source), "--seed", str(seed),
              "--steps", str(steps), "--threads", "1", "--out", str(root), "--json", str(res), *sets]
             + (["--lpt"] if arm == "lpt" else []), out / f"{tag}.log")
        shutil.rmtree(root / arch / tag / "checkpoints", ignore_errors=True)   # 2 per seed and arm add up
    return json.loads(res.read_text())


def final(result: dict) -> dict:
    """{N: accuracy, 'ppl': perplexity} after post-training (LPT's or StateX's run)."""
    run = result["runs"]["LPT" if result["lpt"] else "StateX"]
    return {**{N: run["mqar"][str(N)] for N in PAIRS}, "ppl": run["ppl"]["ppl"]}


def judged(cells: dict) -> float:
    return statistics.mean(cells[N] for N in JUDGED)


def _stats(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarise(results: dict, arms: dict, seeds) -> tuple[str, dict]:
    """Markdown tables and {arch: {row: {N or 'ppl': (mean, sd)}}}; rows: pretrained, LPT, StateX <mode>."""
    agg, lines = {}, []
    lines += ["| model | run | " + " | ".join(f"N={n}" for n in PAIRS) + " | ppl | state (floats) |",
              "|" + "---|" * (len(PAIRS) + 4)]
    for arch, modes in arms.items():
        agg[arch] = {}
        lpt = [results[(arch, s, "lpt")] for s in seeds]
        rows = {"pretrained": [{**{N: r["runs"]["pretrained"]["mqar"][str(N)] for N in PAIRS},
                                "ppl": r["runs"]["pretrained"]["ppl"]["ppl"]} for r in lpt],
                "LPT": [final(r) for r in lpt]}
        rows.update({f"StateX {m}": [final(results[(arch, s, m)]) for s in seeds] for m in modes})
        for row, cells_per_seed in rows.items():
            cells = {k: _stats([c[k] for c in cells_per_seed]) for k in (*PAIRS, "ppl")}
            agg[arch][row] = cells
            state = results[(arch, seeds[0], row.split()[-1] if row.startswith("StateX") else "lpt")]["state"]
            floats = state["after" if row.startswith("StateX") else "before"]
            lines.append(f"| {arch} | {row} | " + " | ".join(f"{cells[N][0]:.3f} ± {cells[N][1]:.3f}" for N in PAIRS)
                         + f" | {cells['ppl'][0]:.3f} ± {cells['ppl'][1]:.3f} | {floats:,} |")
    lines += ["", "StateX - LPT, paired by seed:", "",
              "| model | mode | seed | " + " | ".join(f"N={n}" for n in PAIRS) + " | ppl ratio |",
              "|" + "---|" * (len(PAIRS) + 4)]
    for arch, modes in arms.items():
        for m in modes:
            for s in seeds:
                x, y = final(results[(arch, s, m)]), final(results[(arch, s, "lpt")])
                lines.append(f"| {arch} | {m} | {s} | " + " | ".join(f"{x[N] - y[N]:+.3f}" for N in PAIRS)
                             + f" | {x['ppl'] / y['ppl']:.3f} |")
    return "\n".join(lines), agg


def plot(agg: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(agg), figsize=(5.5 * len(agg), 3.8), squeeze=False)
    for ax, (arch, rows) in zip(axes[0], agg.items()):
        for row, cells in rows.items():
            ax.errorbar(PAIRS, [cells[N][0] for N in PAIRS], yerr=[cells[N][1] for N in PAIRS], marker="o",
                        capsize=3, label=row)
        ax.set_xscale("log", base=2)
        ax.set_xticks(PAIRS, [str(n) for n in PAIRS])
        ax.set_xlabel("key-value pairs (N)")
        ax.set_ylabel("MQAR accuracy")
        ax.set_title(f"tiny {arch}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", choices=sorted(archs.ARCHS), default=list(archs.ARCHS))
    ap.add_argument("--modes", nargs="+", default=None,
                    help="StateX init modes to run (default: every mode of each arch, its expansion.modes)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=1000, help="post-training steps per arm")
    ap.add_argument("--lrs", nargs="+", type=float, default=[3e-3, 1e-2, 3e-2],
                    help="post-training peak learning rates swept for LPT on the first seed; the best is used "
                         "for every arm and seed")
    ap.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each")
    ap.add_argument("--out", default="runs/statex_vs_lpt")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results"),
                    help="where the table, JSON and plot go")
    args = ap.parse_args(argv)
    out, dst = Path(args.out), Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    dst.mkdir(parents=True, exist_ok=True)
    arms = {a: [m for m in archs.get(a).expansion.modes if args.modes is None or m in args.modes] for a in args.archs}
    t0 = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        keys = [(a, s) for a in args.archs for s in args.seeds]
        srcs = dict(zip(keys, pool.map(lambda k: pretrained(*k, out), keys)))
        for a, s in srcs:
            make_data(a, s, args.steps, out)
        first = args.seeds[0]
        sweep = {(a, lr): judged(final(r)) for (a, lr), r in zip(
            [(a, lr) for a in args.archs for lr in args.lrs],
            pool.map(lambda k: post_train(k[0], first, "lpt", k[1], args.steps, out, srcs[(k[0], first)]),
                     [(a, lr) for a in args.archs for lr in args.lrs]))}
        lr = {a: max(args.lrs, key=lambda x: sweep[(a, x)]) for a in args.archs}
        keys = [(a, s, arm) for a in args.archs for s in args.seeds for arm in ("lpt", *arms[a])]
        results = dict(zip(keys, pool.map(lambda k: post_train(*k[:3], lr[k[0]], args.steps, out, srcs[k[:2]]),
                                          keys)))
    md, agg = summarise(results, arms, args.seeds)
    sweep_md = "LPT on seed {} by post-training lr (mean MQAR at N={}): ".format(first, "/".join(map(str, JUDGED))) \
        + "; ".join(f"{a} " + ", ".join(f"{x:g}: {sweep[(a, x)]:.3f}" for x in args.lrs) + f" -> {lr[a]:g}"
                    for a in args.archs)
    tag = "-".join(args.archs) + (f"-lr{args.lrs[0]:g}" if len(args.lrs) == 1 else "")
    plot(agg, dst / f"statex_vs_lpt-{tag}.png")
    (dst / f"statex_vs_lpt-{tag}.md").write_text(sweep_md + "\n\n" + md + "\n")
    # one record per architecture and post-training lr, merged into what earlier runs left (other
    # architectures, or the same one at another lr: a run with one --lrs value measures at a fixed lr)
    path = dst / "statex_vs_lpt.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    command = "python benchmarks/statex_vs_lpt.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for a in args.archs:
        rec = record.setdefault(a, {"runs": {}})
        rec["paper_default"] = archs.get(a).expansion.modes[0]
        if len(args.lrs) > 1:       # a sweep: its choice is the lr the study's table is judged at
            rec["lr"], rec["sweep"] = lr[a], {f"{x:g}": sweep[(a, x)] for x in args.lrs}
        rec["runs"][f"{lr[a]:g}"] = {"command": command, "seeds": args.seeds, "steps": args.steps,
                                     "rows": {r: {str(k): v for k, v in c.items()} for r, c in agg[a].items()}}
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(sweep_md + "\n\n" + md)
    verdicts = []
    for a in args.archs:
        best = max(arms[a], key=lambda m: judged({N: agg[a][f"StateX {m}"][N][0] for N in JUDGED}))
        s, l = agg[a][f"StateX {best}"], agg[a]["LPT"]
        gap = statistics.mean(s[N][0] - l[N][0] for N in JUDGED)
        verdicts.append(f"{a}: best mode {best}, StateX - LPT at N>=32 {gap:+.3f} "
                        f"(spread {max(s[N][1] + l[N][1] for N in JUDGED):.3f}), ppl {s['ppl'][0] / l['ppl'][0] - 1:+.1%}")
    print(f"\nstatex_vs_lpt: {len(args.seeds)} seeds x {len(args.archs)} models, {args.steps} steps an arm, "
          f"in {time.time() - t0:.0f}s; " + "; ".join(verdicts) + f"; table, JSON and plot in {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
