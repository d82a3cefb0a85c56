"""The embedded tiny models: their shapes, the recall + text data they learn from, and how they were made.

``tools/pretrain_tiny.py`` trains them (once, on the CPU) and writes them under ``statex_dist/pretrained/``;
the main job (``statex_dist.demo``) and ``benchmarks/statex_vs_lpt.py`` start from them. Each architecture's
recipe (shapes, shipped seed, initialisation options) is its own: ``statex_dist/archs/<name>/tiny.py``. The
shipped seed is one that left the MQAR plateau early (pretraining seeds differ a lot in how fast they do;
BENCHMARKS.md); its pretrain.json command reproduces it bit for bit on the torch build and CPU it was made on.

Data. Most steps are MQAR (statex_dist.eval.mqar: query-only loss, ids 1-255 = the byte tokenizer's
bytes); one step in ``text_every`` is byte-level synthetic text (statex_dist.data.synthetic) so the model
keeps a language-modelling ability whose perplexity the post-training must not destroy. Each MQAR step draws
one N for the whole batch (T = 4N) and holds about the same number of tokens whatever N; a curriculum starts
with N in {2, 4, 8} (see ``TaskMix.warmup_pairs``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from statex_dist import archs
from statex_dist.data.tasks import TextWindows
from statex_dist.eval.common import inference
from statex_dist.eval.mqar import mqar_batch

PRETRAINED = Path(__file__).resolve().parent / "pretrained"
BYTE_VOCAB = 258  # statex_dist.data.tokenizer.ByteTokenizer: 256 bytes, EOS 256, PAD 257
# MQAR's 256 ids get a block of their own after the bytes: with ids shared with text, MQAR keys (1-127)
# would be the letters of the text, and every recall step would pull their embeddings away from language
# (pretraining then raised the text perplexity 27 -> 104 on the tiny Mamba2).
MQAR_OFFSET = BYTE_VOCAB
VOCAB = MQAR_OFFSET + 256

PAIRS = (8, 16, 32, 64)


def model_config(arch: str) -> dict:
    """The model config dict of the tiny ``arch`` (its shapes: ``archs.get(arch).tiny``; the tasks' vocabulary)."""
    return {"arch": arch, "vocab_size": VOCAB, **archs.get(arch).tiny.config}


def pretrained_path(arch: str, seed: Optional[int] = None) -> Path:
    """The tiny model of ``arch`` pretrained with ``seed`` (default: the shipped one, in the package); other
    seeds live under runs/pretrained/ once tools/pretrain_tiny.py (or benchmarks/statex_vs_lpt.py) made them."""
    if seed is None or seed == archs.get(arch).tiny.shipped_seed:
        return PRETRAINED / f"tiny-{arch}"
    return PRETRAINED.parent.parent / "runs" / "pretrained" / f"tiny-{arch}-seed{seed}"


@dataclass
class TaskMix:
    """What a step trains on. ``pairs``/``weights``: the N of MQAR steps; ``warmup_pairs`` for the first
    ``curriculum`` steps; every ``text_every``-th step is text (0: never). Every step holds about ``tokens``
    tokens: a step of N pairs has ``tokens / 4N`` sequences, so small N (short, cheap sequences) come in
    large batches with as many answers to learn from per step as large N."""
    pairs: Sequence[int] = PAIRS
    weights: Optional[Sequence[float]] = None
    # from N = 2 up: at N in {8, 16} the models sit for thousands of steps on "answer some value of the
    # context" (accuracy 1/N); at N = 2 and 4 binding the key pays off at once, and the plateau breaks
    warmup_pairs: Sequence[int] = (2, 4, 8)
    curriculum: int = 0
    text_every: int = 8
    tokens: int = 8192
    text_len: int = 128
    extra: dict = field(default_factory=dict)


def batches(mix: TaskMix, seed: int, text=None) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """Endless (kind, input_ids [B, T], labels [B, T]) following ``mix``; the same seed, the same stream."""
    g = torch.Generator().manual_seed(1_000_003 * seed + 17)
    text = text if text is not None or not mix.text_every else TextWindows(seed)
    step = 0
    while True:
        step += 1
        if mix.text_every and step % mix.text_every == 0:
            yield ("text", *text.batch(max(1, mix.tokens // mix.text_len), mix.text_len, g))
            continue
        ns, w = (mix.warmup_pairs, None) if step <= mix.curriculum else (mix.pairs, mix.weights)
        n = int(torch.as_tensor(ns)[torch.multinomial(torch.as_tensor(w or [1.0] * len(ns), dtype=torch.float),
                                                         1, generator=g)])
        yield ("mqar", *mqar_batch(n, max(1, mix.tokens // (4 * n)), g, vocab_offset=MQAR_OFFSET))


def text_ppl(model, seed: int = 99, batches_: int = 16, T: int = 128) -> float:
    """Perplexity on held-out synthetic text (a corpus seed no training stream uses)."""
    text = TextWindows(seed, n_docs=100)
    g = torch.Generator().manual_seed(0)
    total = 0.0
    with inference(model):
        for _ in range(batches_):
            x, y = text.batch(16, T, g)
            total += float(model(x, labels=y))
    return math.exp(total / batches_)
