"""``python -m statex_dist.eval --ckpt PATH [--ckpt PATH2 ...] --tasks mqar,passkey,niah,ppl [--data SHARDS]
[--out DIR] [--tp N]``

Any checkpoint ``statex_dist.load_model`` reads (fla GLA, mamba_ssm / transformers Mamba2, this project's
sharded checkpoint or a training checkpoint's ``model/`` folder). ``--tp N`` runs N tensor-parallel
processes: under torchrun (``torchrun --nproc_per_node W -m statex_dist.eval --tp N ...``, W a multiple of N,
the W / N replicas splitting the work) it uses the launched processes; otherwise it starts N gloo (CPU) or
NCCL (GPU) workers itself. Every rank computes; rank 0 prints and writes. The numbers equal TP=1's.
MQAR runs at the vocabulary offset each checkpoint was trained with (the ``mqar_vocab_offset`` of the
pretrain.json that tools/pretrain_tiny.py writes, and reshard, training checkpoints and exports carry), else 0,
unless --vocab-offset names one.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional

from statex_dist import load_model
from statex_dist.cli_errors import Parser, count, fraction_list, int_list, positive_int, run_main
from statex_dist.data import check_shards
from statex_dist.data.tokenizer import load_tokenizer
from statex_dist.eval.config import TASKS, EvalConfig
from statex_dist.eval.report import format_table, summary_line, write_report
from statex_dist.parallel.rendezvous import free_port

EXAMPLE = """example:
  python -m statex_dist.eval --ckpt statex_dist/pretrained/tiny-gla --tasks mqar,passkey --pairs 8,16,32 \\
      --lengths 256,512 --out runs/eval-tiny-gla
"""


def build_parser() -> argparse.ArgumentParser:
    d = EvalConfig  # every evaluation default lives there (also the training YAML's eval section reads it)
    ap = Parser(prog="python -m statex_dist.eval", description=__doc__, epilog=EXAMPLE)
    ap.add_argument("--ckpt", action="append", required=True, metavar="PATH",
                    help="checkpoint folder (repeat to compare runs)")
    ap.add_argument("--name", action="append", help="display name of each --ckpt, in order (default: folder name)")
    ap.add_argument("--tasks", default=",".join(d.tasks), help=f"comma-separated: {','.join(TASKS)}")
    ap.add_argument("--data", metavar="PATH", help="held-out shard folder (tools/make_shards.py) for ppl")
    ap.add_argument("--out", metavar="PATH", help="write eval.json, report.txt and PNG plots here")
    ap.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel processes (see above)")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="dtype of the loaded weights")
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto",
                    help="auto: cuda when torch can use a GPU (as the training config's parallel.device)")
    ap.add_argument("--seed", type=int, default=d.seed, help="selects the fixed evaluation sets")
    ap.add_argument("--batch", type=positive_int, default=d.batch, help="sequences per forward pass")
    ap.add_argument("--pairs", type=int_list, default=list(d.mqar_pairs), help="MQAR N values")
    ap.add_argument("--mqar-n", type=positive_int, default=d.mqar_n, help="MQAR sequences per N")
    ap.add_argument("--vocab-offset", type=count, default=None,
                    help="first id of the MQAR 0-255 block (default: per checkpoint, the offset it was trained "
                         f"with as its pretrain.json records it, else {d.vocab_offset})")
    ap.add_argument("--lengths", type=int_list, default=list(d.lengths), help="passkey/NIAH lengths (tokens)")
    ap.add_argument("--depths", type=fraction_list, default=list(d.depths), help="needle depths in [0, 1]")
    ap.add_argument("--examples", type=positive_int, default=d.grid_n, help="passkey/NIAH examples per (length, depth)")
    ap.add_argument("--tokenizer", default=d.tokenizer, metavar="bytes|PATH",
                    help="'bytes' or a tokenizer folder (passkey, NIAH)")
    ap.add_argument("--segment-len", type=positive_int, default=d.segment_len, metavar="TOKENS",
                    help="run longer sequences in segments of TOKENS, carrying the recurrent state (memory does "
                         "not grow with the length: passkey/NIAH at 1M tokens); default: one forward pass")
    ap.add_argument("--ppl-batches", type=positive_int, default=d.ppl_batches, help="held-out micro-batches for ppl")
    ap.add_argument("--micro-batch", type=positive_int, default=d.micro_batch, help="ppl sequences per forward pass")
    return ap


def vocab_offset(args, ckpt: str) -> int:
    """--vocab-offset, or the offset the checkpoint ``ckpt`` was trained with."""
    from statex_dist.eval.mqar import trained_vocab_offset
    return args.vocab_offset if args.vocab_offset is not None else trained_vocab_offset(ckpt)


def eval_config(args, ckpt: Optional[str] = None):
    """The evaluation the flags ask for; with ``ckpt``, at that checkpoint's MQAR vocabulary offset."""
    eval_cfg = EvalConfig(tasks=[t.strip() for t in args.tasks.split(",") if t.strip()], seed=args.seed,
                     batch=args.batch, mqar_pairs=args.pairs, mqar_n=args.mqar_n, lengths=args.lengths,
                     depths=args.depths, grid_n=args.examples, tokenizer=args.tokenizer, data=args.data,
                     ppl_batches=args.ppl_batches, micro_batch=args.micro_batch, segment_len=args.segment_len)
    return eval_cfg if ckpt is None else eval_cfg.replace(vocab_offset=vocab_offset(args, ckpt))


def run_names(ckpts: list[str], names) -> list[str]:
    if names:
        if len(names) != len(ckpts):
            raise ValueError(f"{len(names)} --name for {len(ckpts)} --ckpt")
        return list(names)
    out = []
    for c in ckpts:
        p = Path(c).resolve()
        n = p.parent.name if p.name == "model" else p.name  # a training checkpoint's model/ folder
        out.append(n if n not in out else f"{n}#{len(out) + 1}")
    return out


def evaluate_checkpoints(args) -> dict:
    """The body every rank runs (process groups already made); returns {name: results}."""
    import torch

    from statex_dist.eval.suite import evaluate
    from statex_dist.parallel.device import current
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    results = {}
    for name, path in zip(run_names(args.ckpt, args.name), args.ckpt):
        model = load_model(path, dtype=dtype)
        if current().type == "cuda":
            model = model.cuda()  # the current device, set per local rank in run()
        results[name] = evaluate(model, eval_config(args, path))
        del model
    return results


def check_inputs(args) -> None:
    """The device and every path and name the evaluation will use, before any process group or model exists."""
    from statex_dist.eval.suite import TASKS
    from statex_dist.parallel.device import select
    select(args.device)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"--tasks {args.tasks!r}: unknown task(s) {unknown}; choose from {', '.join(TASKS)}")
    if "ppl" in tasks and not args.data:
        raise ValueError("the ppl task needs --data SHARDS")
    missing = [c for c in args.ckpt if not Path(c).is_dir()]
    if missing:
        raise FileNotFoundError(f"checkpoint folder(s) not found: {', '.join(missing)}")
    run_names(args.ckpt, args.name)
    from statex_dist.checkpoint.sharded import is_sharded
    for c in args.ckpt:
        if not is_sharded(c):  # a sharded checkpoint is verified against its manifest as it loads
            from statex_dist.checkpoint import read_hf_config
            read_hf_config(c)
        if "mqar" in tasks:
            vocab_offset(args, c)  # a damaged pretrain.json stops the run here, not after the first model
    if "ppl" in tasks:
        check_shards(args.data)
    if {"passkey", "niah"} & set(tasks) and args.tokenizer != "bytes":
        load_tokenizer(args.tokenizer)


def run(argv=None) -> int:
    args = build_parser().parse_args(argv)
    check_inputs(args)
    launched = "WORLD_SIZE" in os.environ
    if args.tp > 1 and not launched:
        return spawn(args.tp, sys.argv[1:] if argv is None else list(argv))
    import torch
    import torch.distributed as dist

    from statex_dist.parallel import state
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world % args.tp:
        raise ValueError(f"{world} processes cannot form TP groups of {args.tp}; launch a multiple of --tp")
    from statex_dist.parallel.device import current
    if launched and current().type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    from megatron.core import parallel_state as ps
    created = not ps.model_parallel_is_initialized()
    state.initialize(args.tp, 1)
    t0 = time.time()
    try:
        results = evaluate_checkpoints(args)
        if dist.get_rank() == 0:
            report(args, results, time.time() - t0, world)
    finally:
        if created and launched:
            state.destroy()
    return 0


def report(args, results: dict, seconds: float, world: int) -> None:
    print(format_table(results), flush=True)
    where = ""
    if args.out:
        config = vars(eval_config(args))
        if "mqar" in config["tasks"]:  # the offset of each checkpoint
            config["vocab_offset"] = {n: vocab_offset(args, c) for n, c in zip(run_names(args.ckpt, args.name),
                                                                                 args.ckpt)}
        meta = {"ckpt": args.ckpt, "tasks": args.tasks, "tp": args.tp, "world": world, "dtype": args.dtype,
                "seed": args.seed, "seconds": round(seconds, 2), "config": config}
        paths = write_report(results, args.out, meta)
        where = f" -> {paths['json']}"
    print(f"eval: {summary_line(results)} (TP={args.tp}, {seconds:.1f}s){where}", flush=True)


# --- self-spawned tensor parallelism ---------------------------------------------------------------------


def _worker(rank: int, world: int, port: int, argv: list[str]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch

    from statex_dist.parallel.device import select
    if select(build_parser().parse_args(argv).device).type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))  # the workers share the cores
    code = main(argv)
    if code:
        sys.exit(code)


def spawn(n: int, argv: list[str]) -> int:
    """Run the evaluation in ``n`` worker processes (one per TP rank); their exit status."""
    import torch.multiprocessing as mp
    try:
        mp.start_processes(_worker, args=(n, free_port(), argv), nprocs=n, join=True, start_method="spawn")
    except mp.ProcessRaisedException as e:
        print(f"statex_dist.eval: a worker failed:\n{e}", file=sys.stderr)
        return 1
    except mp.ProcessExitedException as e:  # a worker's own error message is already printed
        return e.exit_code if e.exit_code and e.exit_code > 0 else 1
    return 0


def main(argv=None) -> int:
    rank = f" (rank {os.environ['RANK']})" if "RANK" in os.environ else ""
    return run_main(f"statex_dist.eval{rank}", run, argv)
