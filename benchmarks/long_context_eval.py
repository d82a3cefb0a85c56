"""Passkey and needle-in-a-haystack at 64K, 256K and 1M tokens on a tiny model, on the CPU, by segmented
evaluation: each example runs in segments of ``--segment-len`` tokens carrying every layer's recurrent and conv
states (statex_dist.eval.common.segments), so memory is that of one segment whatever the length.

For each (task, length) it prints the accuracy, the answer NLL, the seconds, tokens/s, and the process's
peak resident memory so far (``resource.getrusage(RUSAGE_SELF).ru_maxrss``: a peak, so with the lengths
ascending a flat column is memory that does not grow with T). The carried state's size is printed once.

Usage:
    python benchmarks/long_context_eval.py [--ckpt statex_dist/pretrained/tiny-gla] [--tasks passkey,niah]
        [--lengths 65536,262144,1048576] [--depths 0.5] [--examples 1] [--segment-len 16384] [--threads 1]

The same evaluation through the CLI (table and eval.json instead of the memory column):
    python -m statex_dist.eval --ckpt statex_dist/pretrained/tiny-gla --tasks passkey,niah \\
        --lengths 65536,262144,1048576 --depths 0.5 --examples 1 --batch 1 --segment-len 16384
"""
from __future__ import annotations

import argparse
import platform
import resource
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=str(ROOT / "statex_dist/pretrained/tiny-gla"))
    ap.add_argument("--tasks", default="passkey,niah")
    ap.add_argument("--lengths", default="65536,262144,1048576")
    ap.add_argument("--depths", default="0.5")
    ap.add_argument("--examples", type=int, default=1, help="examples per (length, depth)")
    ap.add_argument("--segment-len", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from statex_dist import load_model
    from statex_dist.eval import evaluate_niah, evaluate_passkey
    from statex_dist.models.recurrent_state import RecurrentState
    runs = {"passkey": evaluate_passkey, "niah": evaluate_niah}
    lengths = [int(x) for x in args.lengths.split(",")]
    depths = [float(x) for x in args.depths.split(",")]

    model = load_model(args.ckpt)
    state = RecurrentState(len(model.layers))
    with torch.no_grad():
        model(torch.zeros(1, 1, dtype=torch.long), state=state)
    print(f"{Path(args.ckpt).name}: {sum(p.numel() for p in model.parameters()):,} parameters; carried state "
          f"{state.nbytes():,} bytes per sequence; segment_len {args.segment_len}; {args.examples} example(s) x "
          f"depths {depths}; torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or 'cpu'}")
    print(f"peak RSS after loading: {peak_rss_mib():.0f} MiB")
    print(f"{'task':8} {'length':>9} {'accuracy':>8} {'nll':>7} {'seconds':>8} {'tok/s':>8} {'peak RSS MiB':>12}")
    for task in args.tasks.split(","):
        for L in lengths:
            t0 = time.perf_counter()
            r = runs[task](model, lengths=(L,), depths=depths, n=args.examples, batch=1,
                           segment_len=args.segment_len)
            dt = time.perf_counter() - t0
            acc = sum(r["accuracy"][0]) / len(depths)
            nll = sum(r["nll"][0]) / len(depths)
            tokens = L * len(depths) * args.examples
            print(f"{task:8} {L:>9} {acc:>8.2f} {nll:>7.3f} {dt:>8.1f} {tokens / dt:>8.0f} {peak_rss_mib():>12.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
