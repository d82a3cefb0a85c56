"""Samples per second of the training data loader on the CPU, to set against a training step's consumption.

Writes a synthetic corpus (byte tokenizer) into shards of seq_len 2048, then times one DP rank's loader
(2 DataLoader workers, shuffle buffer 1000) over about two epochs of micro-batches in 3 rounds (the median
is reported), after the first batch (worker start) is out. Also times the first batch of a loader resumed
halfway through an epoch (the cost of skipping consumed samples) and the shard writer itself.

    .venv/bin/python benchmarks/data_pipeline.py [--seq-len 2048] [--workers 2] [--micro-batch 8] [--batches 600]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from statex_dist.data import build_loader  # noqa: E402
from statex_dist.data.synthetic import write_corpus  # noqa: E402
from statex_dist.data.writer import ShardOptions, make_shards  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq-len", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--batches", type=int, default=600)
    ap.add_argument("--shuffle-buffer", type=int, default=1000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = write_corpus(tmp / "in", n_files=8, docs_per_file=500, seed=0)
        t = time.perf_counter()
        m = make_shards(corpus, tmp / "shards", ShardOptions(seq_len=a.seq_len, samples_per_shard=128, workers=2),
                        progress=False)
        write_s = time.perf_counter() - t
        kw = dict(dp_rank=0, dp_size=1, micro_batch=a.micro_batch, seed=0, workers=a.workers,
                  shuffle_buffer=a.shuffle_buffer)
        loader = build_loader(tmp / "shards", **kw)
        it = iter(loader)
        t = time.perf_counter()
        next(it)
        first_s = time.perf_counter() - t
        rates = []      # samples/s of each third of the batches: a busy machine shows as spread
        for _ in range(3):
            t = time.perf_counter()
            for _ in range(a.batches // 3):
                b = next(it)
            rates.append(a.batches // 3 * a.micro_batch / (time.perf_counter() - t))
        assert b["input_ids"].shape == (a.micro_batch, a.seq_len)
        # resume halfway through an epoch: the reader re-reads and drops what it had consumed
        half = m["total_samples"] // (2 * a.micro_batch)
        pos = dict(loader.state_dict(), steps=half, partial=0)   # one micro-batch a step (the default batch)
        t = time.perf_counter()
        next(iter(build_loader(tmp / "shards", position=pos, **kw)))
        resume_s = time.perf_counter() - t
    samples = a.batches // 3 * 3 * a.micro_batch
    rate = sorted(rates)[1]
    print(f"corpus: {m['total_samples']} samples x {a.seq_len} tokens in {len(m['shards'])} shards "
          f"({m['corpus_tokens'] / 1e6:.1f}M tokens); make_shards (2 processes): "
          f"{m['corpus_tokens'] / write_s / 1e6:.1f}M tokens/s")
    print(f"loader: {a.workers} workers, micro_batch {a.micro_batch}, shuffle buffer {a.shuffle_buffer}, "
          f"{samples / m['total_samples']:.1f} epochs timed")
    print(f"  {rate:,.0f} samples/s (median of 3 rounds: {', '.join(f'{r:,.0f}' for r in rates)}) = "
          f"{rate * a.seq_len / 1e6:.2f}M tokens/s, {a.micro_batch / rate * 1e3:.2f} ms per micro-batch")
    print(f"  first batch {first_s * 1e3:.0f} ms (worker start); resumed at half an epoch: first batch "
          f"{resume_s * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
