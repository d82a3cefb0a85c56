#!/usr/bin/env python
"""Pretrain an architecture's embedded tiny model on MQAR + synthetic text, on the CPU, from nothing.

  python tools/pretrain_tiny.py --arch gla                      # -> statex_dist/pretrained/tiny-gla
  python tools/pretrain_tiny.py --arch mamba2 --seed 1 --out runs/pretrained/tiny-mamba2-seed1

The output is a Hugging Face folder in the source library's own format (fla's for GLA and Gated DeltaNet,
transformers' for Mamba2: config.json + model.safetensors) plus pretrain.json (the command, the loss curve and the final MQAR
accuracy per N and text perplexity), written atomically. The same flags give the same weights on the same
torch build. One process, plain torch AdamW: a model of 0.1M parameters gains nothing from DeepSpeed, and
the post-training (statex_dist.train) is where the distributed stack is exercised.
"""
import json
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from statex_dist import archs, tiny
from statex_dist.models.config import config_from_dict
from statex_dist.training.optim import cosine_with_warmup


def build(arch: str, seed: int, overrides: dict, dt_range=None, a_range=None):
    # the model stack (megatron-core) is imported where it is used: --help and a bad flag answer at once
    from statex_dist.models import build_model, specs_for
    from statex_dist.models.init import init_tensor
    config = config_from_dict({**tiny.model_config(arch), **overrides})
    # the recipe's options (GLA's gate bias, Mamba2's A = 1..nheads), then the flags given. Mamba2: a small
    # A (--a-range) gives a long memory without weakening the writes (dt * B x) as a small dt (--dt-range) does
    options = dict(archs.get(arch).tiny.init_options)
    options.update({k: tuple(v) for k, v in (("dt_range", dt_range), ("a_range", a_range)) if v})
    model = build_model(config, init=False)
    specs = specs_for(config, 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(init_tensor(name, tuple(specs[name].shape), config, seed, **options))
    return config, model


def save(model, config, out: Path, record: dict) -> None:
    from statex_dist.checkpoint.atomic import atomic_dir
    from statex_dist.checkpoint.hf_export import write_hf
    from statex_dist.models import specs_for
    from statex_dist.parallel.weights import gather_full
    specs = specs_for(config, 1)
    full = gather_full(model, specs)
    fmt = archs.of(config).default_format
    with atomic_dir(out, overwrite=True) as tmp:
        write_hf(tmp, fmt, config, ((n, full[n]) for n in specs), {n: torch.float32 for n in specs})
        (tmp / "pretrain.json").write_text(json.dumps(record, indent=1) + "\n")


EXAMPLE = """example:
  python tools/pretrain_tiny.py --arch mamba2 --seed 1 --steps 3000 --out runs/pretrained/tiny-mamba2-seed1
  python tools/pretrain_tiny.py --init-from runs/pretrained/tiny-mamba2-seed1 --steps 1000 --out runs/more
"""


def parser():
    from statex_dist.cli_errors import Parser, count, positive_float, positive_int
    ap = Parser(prog="pretrain_tiny.py", description=__doc__, epilog=EXAMPLE)
    ap.add_argument("--arch", choices=sorted(archs.ARCHS), default=archs.DEFAULT,
                    help="which tiny model (statex_dist.tiny)")
    ap.add_argument("--seed", type=int, default=0,
                    help="init and data seed (each architecture's tiny.shipped_seed ships: statex_dist/archs/<name>/tiny.py)")
    ap.add_argument("--steps", type=positive_int, default=3000, help="optimizer steps")
    ap.add_argument("--lr", type=positive_float, default=3e-3,
                    help="peak lr, cosine to lr/10 after 100 warm-up steps")
    ap.add_argument("--tokens", type=positive_int, default=tiny.TaskMix.tokens, help="tokens per step")
    ap.add_argument("--curriculum", type=count, default=None,
                    help="steps on --warmup-pairs first (default steps/5; 0 with --init-from)")
    ap.add_argument("--warmup-pairs", type=positive_int, nargs="+", default=list(tiny.TaskMix.warmup_pairs),
                    help="N of the MQAR steps of the curriculum (uniform)")
    ap.add_argument("--pairs", type=positive_int, nargs="+", default=list(tiny.TaskMix.pairs),
                    help="N of the MQAR steps after the curriculum (uniform)")
    ap.add_argument("--eval-every", type=positive_int, default=500, help="steps between MQAR / perplexity evaluations")
    ap.add_argument("--text-every", type=count, default=tiny.TaskMix.text_every,
                    help="every k-th step is synthetic text (0: MQAR only)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a model config field (VALUE as JSON), e.g. --set num_layers=1 --set num_heads=4")
    ap.add_argument("--dt-range", type=positive_float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="Mamba2: draw the initial step size dt from log-U(LO, HI) (default mamba_ssm's 1e-3 0.1)")
    ap.add_argument("--a-range", type=positive_float, nargs=2, default=None, metavar=("LO", "HI"),
                    help="Mamba2: draw -A from U(LO, HI) (mamba_ssm's A_init_range; default A = -(1..nheads))")
    ap.add_argument("--init-from", default=None, metavar="PATH",
                    help="continue from this earlier output (its weights; a fresh optimizer and schedule)")
    ap.add_argument("--threads", type=positive_int, default=1,
                    help="torch threads (1: two runs side by side on 2 cores)")
    ap.add_argument("--out", default=None, metavar="PATH",
                    help="output folder (default: statex_dist.tiny.pretrained_path)")
    return ap


def model_overrides(sets: list[str], arch: str) -> dict:
    """``--set KEY=VALUE`` -> {key: value}, refused unless the tiny config of ``arch`` takes it."""
    out = {}
    for kv in sets:
        k, eq, v = kv.partition("=")
        if not eq or not k:
            raise ValueError(f"--set {kv!r}: expected KEY=VALUE, e.g. --set num_layers=1")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            raise ValueError(f"--set {kv!r}: the value is not JSON (a number, true/false, a quoted string or a "
                             f"list)") from None
    try:
        config_from_dict({**tiny.model_config(arch), **out})
    except (TypeError, ValueError) as e:
        raise ValueError(f"--set {' '.join(sets)}: {e}") from None
    return out


def earlier_run(path: str) -> dict:
    """The pretrain.json of an earlier output (what --init-from continues)."""
    record = Path(path) / "pretrain.json"
    if not record.is_file():
        raise FileNotFoundError(f"--init-from {path}: no pretrain.json there; pass an earlier output of this tool")
    from statex_dist.checkpoint.tensor_files import read_json
    return read_json(record)


def main(argv=None) -> int:
    from statex_dist.cli_errors import EXPECTED, fail
    try:
        args, config, model, earlier = setup(argv)
    except EXPECTED as e:  # only the inputs: an error inside the steps is a bug and keeps its traceback
        return fail("pretrain_tiny.py", e)
    return pretrain(args, config, model, earlier, argv)


def setup(argv):
    """Every input checked (the model overrides, the run this one continues), then the model to train."""
    args = parser().parse_args(argv)
    sets = model_overrides(args.set, args.arch)
    earlier = earlier_run(args.init_from) if args.init_from else None
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.init_from:
        from statex_dist.api import load_model
        model = load_model(args.init_from)
        config = model.config
    else:
        config, model = build(args.arch, args.seed, sets, args.dt_range, args.a_range)
    return args, config, model, earlier


def pretrain(args, config, model, earlier, argv) -> int:
    from statex_dist.eval.mqar import evaluate_mqar
    out = Path(args.out) if args.out else tiny.pretrained_path(args.arch, args.seed)
    t0 = time.time()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    chain, rec = 0, earlier
    while rec:                 # how many runs this one continues
        chain, rec = chain + 1, rec.get("continues")
    if args.curriculum is None:
        args.curriculum = 0 if args.init_from else args.steps // 5
    mix = tiny.TaskMix(tokens=args.tokens, text_every=args.text_every, curriculum=args.curriculum,
                       warmup_pairs=tuple(args.warmup_pairs), pairs=tuple(args.pairs), weights=None)
    stream = tiny.batches(mix, args.seed + 7919 * chain)  # a continuation draws new batches
    losses, evals = {"mqar": [], "text": []}, []
    bar = tqdm(range(args.steps), desc=f"pretrain tiny-{args.arch}", disable=None)
    for step in bar:
        for gr in opt.param_groups:
            gr["lr"] = args.lr * cosine_with_warmup(step, 100, args.steps, 0.1)
        kind, x, y = next(stream)
        loss = model(x, labels=y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses[kind].append(round(loss.item(), 4))
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            acc = evaluate_mqar(model, tiny.PAIRS, n=256, vocab_offset=tiny.MQAR_OFFSET)
            evals.append({"step": step + 1, "mqar": acc, "ppl": tiny.text_ppl(model), "seconds": time.time() - t0})
            bar.write(f"step {step + 1}: MQAR " + " ".join(f"N={k}:{v:.3f}" for k, v in acc.items())
                      + f", text ppl {evals[-1]['ppl']:.2f}")
        bar.set_postfix(loss=f"{loss.item():.3f}", kind=kind, refresh=False)
    final = evals[-1]
    argv = list(argv if argv is not None else sys.argv[1:])
    record = {"command": "python tools/pretrain_tiny.py " + " ".join(argv), "argv": argv,
              "arch": args.arch, "seed": args.seed, "steps": args.steps, "lr": args.lr, "tokens_per_step": args.tokens,
              "curriculum": mix.curriculum, "warmup_pairs": list(mix.warmup_pairs), "pairs": list(mix.pairs), "mqar_vocab_offset": tiny.MQAR_OFFSET, "text_every": mix.text_every, "torch": torch.__version__,
              "seconds": round(time.time() - t0, 1), "final": final, "evals": evals,
              "loss_every_50": {k: v[::50] for k, v in losses.items()},
              "continues": earlier}
    save(model, config, out, record)
    print(f"pretrain_tiny: {args.arch} seed {args.seed}, {args.steps} steps in {time.time() - t0:.0f}s -> {out}; "
          f"MQAR " + " ".join(f"N={k}:{v:.3f}" for k, v in final["mqar"].items()) + f"; text ppl {final['ppl']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
