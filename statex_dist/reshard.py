"""Expand (StateX), reshard and export checkpoints in one streaming pass: the engine of
``tools/reshard_expand.py``. One full tensor (and its TP slices) is in memory at a time."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from statex_dist import archs
from statex_dist.checkpoint.atomic import atomic_dir
from statex_dist.checkpoint.errors import CheckpointError, MissingCheckpointError
from statex_dist.checkpoint.hf_export import write_hf
from statex_dist.checkpoint.sharded import write_sharded
from statex_dist.checkpoint.side_files import SIDE_DIR, copy_side_files, side_files_of
from statex_dist.checkpoint.sources import hf_origin, open_source
from statex_dist.cli_errors import Parser, path_inside, positive_int, run_main
from statex_dist.models import specs_for
from statex_dist.models.validate import check_parallel_sizes
from statex_dist.statex import ExpansionPlan, count_params, expand_config, expand_tensor, state_floats
from statex_dist.training import optimizer_state
from statex_dist.training.checkpoints import META

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
EXAMPLE = """example:
  python tools/reshard_expand.py --src statex_dist/pretrained/tiny-gla --dst runs/tiny-gla-x --expand-every 2 \\
      --heads 1 --init merge --tp 2
  python tools/reshard_expand.py --src runs/tiny-gla-x --dst runs/tiny-gla-x-hf --format hf
"""


def _expansions() -> list:
    """One architecture's Expansion per plan option that sizes the expanded layers (one flag each)."""
    out = {}
    for a in archs.ARCHS.values():
        out.setdefault(a.expansion.option, a.expansion)
    return list(out.values())


def _labels(option: str) -> str:
    """The architectures whose expansion ``option`` sizes, for messages: "GLA and Gated DeltaNet"."""
    labels = [a.label for a in archs.ARCHS.values() if a.expansion.option == option]
    return labels[0] if len(labels) == 1 else f"{', '.join(labels[:-1])} and {labels[-1]}"


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog="reshard_expand.py", epilog=EXAMPLE,
        description="Expand the recurrent state of chosen layers (StateX), shard for any TP x PP layout, or "
                    "export back to the source's Hugging Face format, in one streaming pass.")
    ap.add_argument("--src", required=True, metavar="PATH",
                    help="Hugging Face folder (fla GLA or Gated DeltaNet, mamba_ssm / transformers Mamba2), a "
                         "statex-dist sharded checkpoint, or a training checkpoint's step folder (its optimizer "
                         "state is resharded too; checkpoint.resume=DST continues the run at the new layout)")
    ap.add_argument("--dst", required=True, metavar="PATH", help="output folder (written atomically; not inside --src)")
    ap.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel size of the sharded output")
    ap.add_argument("--pp", type=positive_int, default=1, help="pipeline-parallel size of the sharded output")
    ap.add_argument("--format", choices=["sharded", "hf"], default="sharded",
                    help="this project's sharded checkpoint, or the source's Hugging Face format")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--expand-every", type=positive_int, metavar="K",
                   help="expand layers 0, K, 2K, ... (default K=6 when another expansion flag is given)")
    g.add_argument("--expand-layers", metavar="LIST", help="comma-separated layer indices to expand")
    for expansion in _expansions():   # each architecture's size of an expanded layer (--heads, --d-state)
        aliases = sorted({"--" + n.replace("_", "-") for a in archs.ARCHS.values()
                          if a.expansion.option == expansion.option for n in a.expansion.aliases})
        ap.add_argument(expansion.flag, *aliases, dest=expansion.option, type=positive_int,
                        help=f"{_labels(expansion.option)} only: {expansion.option_help}")
    init_help = "; ".join(f"{a.label}: {'|'.join(a.expansion.modes)} (default {a.expansion.modes[0]})"
                          for a in archs.ARCHS.values())
    ap.add_argument("--init", help=init_help)
    ap.add_argument("--seed", type=int, default=0, help="seed of the re-initialised tensors")
    ap.add_argument("--dtype", choices=["fp32", "bf16", "keep"], default="keep", help="dtype of the written tensors")
    ap.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    return ap


def check_paths(src: str, dst: str) -> None:
    """Refuse a destination that would write into, or (with --overwrite) delete, the source."""
    if not Path(src).exists():
        raise MissingCheckpointError(f"--src {src}: does not exist; pass a checkpoint folder")
    if path_inside(dst, src):
        raise CheckpointError(f"--dst {dst} is inside --src {src}; choose a destination outside the source")
    if path_inside(src, dst):
        raise CheckpointError(f"--src {src} is inside --dst {dst}; writing DST would replace the source")


def make_plan(args, config) -> Optional[ExpansionPlan]:
    sizes = {e.option: getattr(args, e.option) for e in _expansions()}
    wanted = any(v is not None for v in (args.expand_every, args.expand_layers, *sizes.values(), args.init))
    if not wanted:
        return None
    arch = archs.of(config)
    for other in _expansions():
        if other.option != arch.expansion.option and sizes[other.option] is not None:
            raise ValueError(f"{other.flag} applies to {_labels(other.option)} checkpoints; this is a {arch.label} "
                             f"checkpoint (use {arch.expansion.flag})")
    try:
        layers = [int(x) for x in args.expand_layers.split(",") if x.strip()] if args.expand_layers else None
    except ValueError:
        raise ValueError(f"--expand-layers {args.expand_layers!r}: expected comma-separated layer indices") from None
    return ExpansionPlan.for_model(config, every=args.expand_every, layers=layers, init=args.init, seed=args.seed,
                                   **sizes)


def training_checkpoint(folder: Path) -> bool:
    """A training checkpoint's step folder (``checkpoints/stepNNNNNNNN``) holding the layout-free
    optimizer state beside its weights."""
    return (folder / META).exists() and (folder / "model").is_dir() and optimizer_state.saved(folder)


def write_training_meta(src: Path, dst: Path, tp: int, pp: int) -> None:
    """The step folder's statex.json for the new layout: DeepSpeed's own files are not carried, so a resume
    always converts from the layout-free state."""
    meta = json.loads((src / META).read_text())
    layout = dict(meta.get("layout") or {}, tp=tp, pp=pp, dp=None)
    meta.update(tp=tp, pp=pp, layout=layout, deepspeed=False, resharded_from=str(src))
    (dst / META).write_text(json.dumps(meta))


def run(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    t0 = time.time()
    if args.format == "hf" and (args.tp != 1 or args.pp != 1):
        raise ValueError("--format hf writes one unsharded folder: drop --tp/--pp (or use --format sharded)")
    check_paths(args.src, args.dst)
    if Path(args.dst).exists() and not args.overwrite:
        raise CheckpointError(f"{Path(args.dst).absolute()}: already exists; pass --overwrite to replace it")
    training = training_checkpoint(Path(args.src))
    model_dir = Path(args.src) / "model" if training else Path(args.src)
    src = open_source(model_dir)
    old = src.config
    plan = make_plan(args, old)
    if training and plan and args.format == "sharded":
        raise ValueError(f"--src {args.src} is a training checkpoint: its optimizer state belongs to the model as "
                         f"trained; expand its weights with --src {model_dir}")
    training = training and args.format == "sharded"   # an export takes the weights only
    new = expand_config(old, plan) if plan else old
    check_parallel_sizes(new, args.tp, args.pp)  # before anything is written
    names = list(specs_for(new, args.tp))
    dtypes = {n: DTYPES[args.dtype] if args.dtype != "keep" else src.dtype(n) for n in names}
    fmt, hf_cfg = hf_origin(src)
    stats = {"tensors": 0, "bytes": 0}
    # the state as stored (optimizer_state.stored): a master that the fp32 weights stood for stays in model/
    # while the new weights are fp32 too, and is written out where they are not
    state = optimizer_state.stored(Path(args.src)) if training else {}
    if state and not optimizer_state.own_master(Path(args.src)) and all(d == torch.float32 for d in dtypes.values()):
        state.pop(optimizer_state.MASTER)
    states = list(state)
    bar = tqdm(total=len(names) * (1 + len(states)), unit="tensor", desc="reshard_expand", disable=None)

    def tensors():
        for name in names:
            t = src.get(name)
            if plan is not None:
                t = expand_tensor(name, t, old, new, plan)
            yield name, t

    def progress(name, t):
        stats["tensors"] += 1
        stats["bytes"] += t.numel() * dtypes[name].itemsize
        bar.update(1)

    side = side_files_of(model_dir)
    with atomic_dir(args.dst, overwrite=args.overwrite) as tmp:
        out = tmp / "model" if training else tmp
        if args.format == "hf":
            write_hf(out, fmt, new, tensors(), dtypes, base_config=hf_cfg, progress=progress)
            copy_side_files(side, out)
        else:
            copy_side_files(side, out / SIDE_DIR)  # before the manifest, which lists it
            write_sharded(out, new, tensors(), dtypes, args.tp, args.pp,
                          hf={"format": fmt.name, "config": hf_cfg}, progress=progress)
        for key in states:
            write_sharded(tmp / optimizer_state.FOLDER / key, new, ((n, state[key].get(n)) for n in names),
                          {n: torch.float32 for n in names}, args.tp, args.pp, progress=progress)
        if training:
            write_training_meta(Path(args.src), tmp, args.tp, args.pp)
    bar.close()
    secs = time.time() - t0
    result = dict(stats, seconds=secs, state_before=state_floats(old), state_after=state_floats(new),
                  params_before=count_params(old), params_after=count_params(new),
                  expanded=list(plan.layers) if plan else [])
    gbs = stats["bytes"] / max(secs, 1e-9) / 1e9
    what = f"expanded layers {result['expanded']}, " if plan else ""
    if args.format == "hf":
        written = json.loads((Path(args.dst) / "config.json").read_text())
        layout = f"HF model_type={written.get('model_type', fmt.name)}"
    else:
        layout = f"sharded TP={args.tp} x PP={args.pp}" + (", with the optimizer state" if training else "")
    print(f"reshard_expand: {what}{stats['tensors']} tensors, {stats['bytes'] / 1e9:.3f} GB -> {args.dst} "
          f"({layout}) in {secs:.1f}s ({gbs:.2f} GB/s); params {result['params_before']:,} -> "
          f"{result['params_after']:,}; recurrent state {result['state_before']:,} -> {result['state_after']:,} floats")
    return result


def main(argv=None) -> int:

    def body(a):
        run(a)  # its summary dict is for Python callers; the command line prints it
    return run_main("reshard_expand.py", body, argv)
