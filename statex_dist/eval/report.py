"""Results of several runs (``{run name: evaluate(...) output}``) as a console table, a JSON file and
PNG plots: MQAR accuracy vs pairs (one line per run), depth x length heat maps for passkey and NIAH."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

GRID_TASKS = ("passkey", "niah")


def _mqar(res: dict) -> dict[int, float]:
    return {int(k): v for k, v in sorted(res["mqar"].items(), key=lambda kv: int(kv[0]))}


def format_table(results: dict[str, dict]) -> str:
    """Plain-text tables, one section per task."""
    lines = []
    names = list(results)
    w = max([len(n) for n in names] + [4])
    with_mqar = [n for n in names if "mqar" in results[n]]
    if with_mqar:
        ns = sorted({N for n in with_mqar for N in _mqar(results[n])})
        lines.append("MQAR accuracy (query positions)")
        lines.append(f"{'run':<{w}} " + " ".join(f"{'N=' + str(N):>7}" for N in ns) + f" {'mean':>7}")
        for n in with_mqar:
            acc = _mqar(results[n])
            cells = " ".join(f"{acc[N]:>7.3f}" if N in acc else f"{'-':>7}" for N in ns)
            lines.append(f"{n:<{w}} {cells} {sum(acc.values()) / len(acc):>7.3f}")
        lines.append("")
    for task in GRID_TASKS:
        for n in names:
            if task not in results[n]:
                continue
            g = results[n][task]
            lines.append(f"{task} accuracy, {n} (rows: depth, columns: length in tokens)")
            lines.append(f"{'depth':>6} " + " ".join(f"{L:>7}" for L in g["lengths"]))
            for j, d in enumerate(g["depths"]):
                lines.append(f"{d:>6.2f} " + " ".join(f"{g['accuracy'][i][j]:>7.2f}" for i in range(len(g["lengths"]))))
            lines.append("")
    with_ppl = [n for n in names if "ppl" in results[n]]
    if with_ppl:
        lines.append(f"{'run':<{w}} {'ppl':>10} {'loss':>8} {'tokens':>10}")
        for n in with_ppl:
            p = results[n]["ppl"]
            lines.append(f"{n:<{w}} {p['ppl']:>10.4f} {p['loss']:>8.4f} {p['tokens']:>10}")
    return "\n".join(lines).rstrip() + "\n"


def write_json(results: dict[str, dict], path, meta: Optional[dict] = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta or {}, "runs": results}, indent=1, default=str))
    return path


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on cluster nodes
    import matplotlib.pyplot as plt
    return plt


def plot_mqar(results: dict[str, dict], path) -> Path:
    """Accuracy vs number of pairs (log2 x axis), one line per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4), layout="constrained")
    ns = set()
    for name, res in results.items():
        if "mqar" in res:
            acc = _mqar(res)
            ns |= set(acc)
            ax.plot(list(acc), list(acc.values()), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(ns), [str(n) for n in sorted(ns)])
    ax.minorticks_off()
    ax.set_xlabel("key-value pairs N (T = 4N)")
    ax.set_ylabel("accuracy at query positions")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("MQAR")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_grid(results: dict[str, dict], task: str, path) -> Path:
    """Depth x length heat map of ``task``'s accuracy, one panel per run."""
    plt = _pyplot()
    runs = [(n, r[task]) for n, r in results.items() if task in r]
    cols = max(len(g["lengths"]) for _, g in runs)
    fig, axes = plt.subplots(1, len(runs), figsize=(1.8 + (0.75 * cols + 0.9) * len(runs), 3.8), squeeze=False,
                             layout="constrained")
    for k, (ax, (name, g)) in enumerate(zip(axes[0], runs)):
        acc = [[g["accuracy"][i][j] for i in range(len(g["lengths"]))] for j in range(len(g["depths"]))]
        im = ax.imshow(acc, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(g["lengths"])), [str(L) for L in g["lengths"]], fontsize=8)
        ax.set_yticks(range(len(g["depths"])), [f"{d:g}" for d in g["depths"]] if k == 0 else [], fontsize=8)
        for j, row in enumerate(acc):
            for i, v in enumerate(row):
                ax.text(i, j, f"{v:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xlabel("length (tokens)", fontsize=9)
        if k == 0:
            ax.set_ylabel("needle depth", fontsize=9)
        ax.set_title(name, fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="accuracy")
    fig.suptitle(task)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_report(results: dict[str, dict], out_dir, meta: Optional[dict] = None) -> dict[str, Path]:
    """eval.json, report.txt and the plots of the tasks present, in ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(results, out / "eval.json", meta)}
    (out / "report.txt").write_text(format_table(results))
    paths["table"] = out / "report.txt"
    if any("mqar" in r for r in results.values()):
        paths["mqar"] = plot_mqar(results, out / "mqar.png")
    for task in GRID_TASKS:
        if any(task in r for r in results.values()):
            paths[task] = plot_grid(results, task, out / f"{task}.png")
    return paths


def summary_line(results: dict[str, dict]) -> str:
    """One line: per run, MQAR mean accuracy, passkey / NIAH mean accuracy, ppl."""
    parts = []
    for name, r in results.items():
        bits = []
        if "mqar" in r:
            acc = _mqar(r)
            bits.append("mqar " + " ".join(f"N{N}={a:.2f}" for N, a in acc.items()))
        for task in GRID_TASKS:
            if task in r:
                vals = [v for row in r[task]["accuracy"] for v in row]
                bits.append(f"{task} {sum(vals) / len(vals):.2f}")
        if "ppl" in r:
            bits.append(f"ppl {r['ppl']['ppl']:.3f}")
        parts.append(f"{name}: " + ", ".join(bits))
    return "; ".join(parts)
