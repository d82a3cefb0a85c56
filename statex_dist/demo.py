"""The main job on the embedded default, end to end on this machine's CPU in a few minutes:

the pretrained tiny model (statex_dist/pretrained/, made by tools/pretrain_tiny.py) -> evaluation ->
StateX expansion -> post-training through a real DeepSpeed engine on generated MQAR + text shards ->
checkpoint (sharded format) -> evaluation -> a before/after table of state size, parameters, MQAR accuracy
per number of pairs and held-out perplexity, with the JSON, plots and tensorboard logs it wrote.

    bash launch/train.sh [--arch gla|mamba2] [--steps N] [--lpt] [--out runs/demo]

--lpt runs the same post-training without the expansion (the paper's LPT baseline);
benchmarks/statex_vs_lpt.py compares the two over several pretraining seeds.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from statex_dist import archs
from statex_dist.data.synthetic import write_corpus
from statex_dist.data.tasks import write_task_shards
from statex_dist.data.writer import ShardOptions, make_shards
from statex_dist.eval import EvalConfig, evaluate
from statex_dist.eval.report import write_report
from statex_dist.run_config import load_run_config
from statex_dist.statex import count_params, state_floats
from statex_dist.tiny import PAIRS, pretrained_path
from statex_dist.train import Run

ROOT = Path(__file__).resolve().parents[1]
# post-training leans on the pair counts where the small state runs out (N >= 32 on the tiny models), and keeps
# small ones, whose answers teach a re-initialised or merged layer to bind keys again quickly
TRAIN_PAIRS = (2, 4, 8, 16, 32, 64)
TRAIN_WEIGHTS = (1, 1, 1, 1, 2, 3)


def make_data(out: Path, samples: int, seq_len: int, seed: int, vocab_offset: int) -> tuple[Path, Path]:
    """Task shards for training and a held-out text shard folder for perplexity (both made once)."""
    train = out / f"mqar-train-{samples}x{seq_len}-seed{seed}-offset{vocab_offset}-n{'-'.join(map(str, TRAIN_PAIRS))}"
    if not (train / "manifest.json").exists():
        write_task_shards(train, samples, seq_len, TRAIN_PAIRS, TRAIN_WEIGHTS, text_fraction=0.25, seed=seed,
                          samples_per_shard=256, vocab_offset=vocab_offset, overwrite=True)
    valid = out / f"text-valid-{seq_len}"
    if not (valid / "manifest.json").exists():
        corpus = write_corpus(out / "corpus-valid", n_files=1, docs_per_file=60, seed=99, lexicon_seed=0)
        make_shards(corpus, valid, ShardOptions(seq_len=seq_len, samples_per_shard=64), overwrite=True,
                    progress=False)
    return train, valid


def run_data(arch: str, root: Path, steps: int, seed: int, overrides: tuple[str, ...] = ()):
    """The arch's run config (before the run's own overrides) and the shards ``steps`` steps of it read,
    made once under ``root/data`` (every arm of a run with this root shares them)."""
    run_cfg = load_run_config(ROOT / "configs" / f"tiny-{arch}-statex.yaml", list(overrides))
    offset = EvalConfig.from_run(run_cfg).vocab_offset  # the ids model.source learnt MQAR at
    return run_cfg, make_data(root / "data", steps * run_cfg.data.global_batch, run_cfg.data.seq_len, seed, offset)


def post_train(arch: str, source: Path, steps: int, out: Path, lpt: bool = False, seed: int = 0,
               overrides: tuple[str, ...] = ()) -> dict:
    """Evaluate ``source``, post-train it (StateX, or LPT), evaluate again. Returns
    {"runs": {name: eval results}, "state": {...}, "params": {...}, "seconds", "checkpoint", "init", ...}."""
    from statex_dist.api import load_model
    t0 = time.time()
    run_cfg, (train, valid) = run_data(arch, out.parent, steps, seed, (f"model.source={source}", *overrides))
    name = "lpt" if lpt else "statex"
    run_cfg = load_run_config(ROOT / "configs" / f"tiny-{arch}-statex.yaml", [
        f"model.source={source}", f"data.train={train}", f"data.valid={valid}", f"logging.dir={out / name}",
        f"checkpoint.dir={out / name / 'checkpoints'}", f"schedule.total_steps={steps}", f"seed={seed}",
        f"data.seed={seed}", f"expansion.seed={seed}", f"expansion.enabled={not lpt}",
        f"logging.every={max(1, steps // 8)}",
        f"schedule.warmup_steps={min(run_cfg.schedule.warmup_steps, steps // 2)}",
        *overrides])
    ev = EvalConfig.from_run(run_cfg, ("mqar", "ppl")).replace(mqar_pairs=PAIRS, micro_batch=4)
    pretrained = load_model(source)
    runs = {"pretrained": evaluate(pretrained, ev, dp=(0, 1, None))}
    run = Run(run_cfg)
    base, new = run.source.base_config, run.model_config
    if not lpt:
        runs["expanded"] = evaluate(run.module, ev, dp=(0, 1, None))
    result = run.train()
    runs["LPT" if lpt else "StateX"] = run.last_eval
    return {"runs": runs, "arch": arch, "source": str(source), "steps": steps, "seed": seed, "lpt": lpt,
            "state": {"before": state_floats(base), "after": state_floats(new)},
            "params": {"before": count_params(base), "after": count_params(new)},
            "loss": {"first": result["losses"][0], "last": result["losses"][-1]},
            "expansion": run.source.description, "init": None if lpt else run_cfg.expansion.init,
            "lr": run_cfg.optimizer.lr, "seconds": round(time.time() - t0, 1), "checkpoint": str(run.ckpt_dir),
            "logs": str(run_cfg.logging.dir)}


def table(res: dict) -> str:
    runs = res["runs"]
    names = list(runs)
    rows = [[""] + names]
    sizes = {"pretrained": "before"}
    rows.append(["recurrent state (floats/seq)"] + [f"{res['state'][sizes.get(n, 'after')]:,}" for n in names])
    rows.append(["parameters"] + [f"{res['params'][sizes.get(n, 'after')]:,}" for n in names])
    for N in PAIRS:
        rows.append([f"MQAR accuracy, N={N}"] + [f"{runs[n]['mqar'][N]:.3f}" for n in names])
    rows.append(["held-out perplexity"] + [f"{runs[n]['ppl']['ppl']:.3f}" for n in names])
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows)


STUDY = ROOT / "benchmarks" / "results" / "statex_vs_lpt.json"


def study_lines(arch: str, mode: Optional[str], lr: float) -> list[str]:
    """What benchmarks/statex_vs_lpt.py measured for ``arch`` (mean over its pretraining seeds) at the N where
    the small state runs out: LPT at the lr its sweep chose and at this run's ``lr``, this run's init ``mode``
    (None: an LPT run) and the paper's default mode at this run's lr (else at the sweep's); [] if it has not
    measured ``arch``."""
    study = json.loads(STUDY.read_text()).get(arch) if STUDY.exists() else None
    if not study or "lr" not in study:
        return []
    best, runs = f"{study['lr']:g}", study["runs"]

    def scores(row: str, at: str) -> str:
        return " / ".join(f"{runs[at]['rows'][row][str(N)][0]:.3f}" for N in (32, 64))

    def at_lr(row: str) -> Optional[str]:
        return next((x for x in (f"{lr:g}", best) if row in runs.get(x, {}).get("rows", {})), None)
    lpt = f"  LPT at its best lr {best}: {scores('LPT', best)}"
    if f"{lr:g}" != best and at_lr("LPT") == f"{lr:g}":
        lpt += f"; at lr {lr:g}: {scores('LPT', f'{lr:g}')}"
    lines = [f"the study ({STUDY.relative_to(ROOT)}: mean of {len(runs[best]['seeds'])} pretraining seeds, "
             f"{runs[best]['steps']} steps an arm), MQAR N=32 / N=64:", lpt]
    default = study["paper_default"]
    modes = [(mode, "this run's mode")] if mode else []
    for m, label in modes + ([(default, "the paper's default")] if default != mode else []):
        if at := at_lr(f"StateX {m}"):
            lines.append(f"  StateX {m} ({label}) at lr {at}: {scores(f'StateX {m}', at)}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=sorted(archs.ARCHS), default=archs.DEFAULT)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lpt", action="store_true", help="post-train without expansion (the LPT baseline)")
    ap.add_argument("--source", default=None, help="pretrained model (default: the embedded tiny model)")
    ap.add_argument("--seed", type=int, default=0, help="post-training data, order and expansion seed")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("overrides", nargs="*", help="run config overrides, key.sub=value")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    source = Path(args.source) if args.source else pretrained_path(args.arch)
    if not (source / "config.json").exists() and not (source / "manifest.json").exists():
        raise SystemExit(f"{source}: no pretrained model there; make it with "
                         f"python tools/pretrain_tiny.py --arch {args.arch} --out {source}")
    out = Path(args.out) / args.arch
    res = post_train(args.arch, source, args.steps, out, lpt=args.lpt, seed=args.seed,
                     overrides=tuple(args.overrides))
    files = write_report(res["runs"], Path(res["logs"]), meta={
        k: v for k, v in res.items() if k != "runs"})
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str) + "\n")
    print()
    print(table(res))
    arm = "LPT" if args.lpt else "StateX"
    print(f"\n{args.arch} {arm}: {res['expansion']}; {args.steps} steps, loss {res['loss']['first']:.3f} -> "
          f"{res['loss']['last']:.3f}; MQAR N=64 {res['runs']['pretrained']['mqar'][64]:.3f} -> "
          f"{res['runs'][arm]['mqar'][64]:.3f} in {res['seconds']:.0f}s; tensorboard: {res['logs']}; "
          f"checkpoint: {res['checkpoint']}; results: {', '.join(str(p) for p in files.values())}")
    for line in study_lines(args.arch, res["init"], res["lr"]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
