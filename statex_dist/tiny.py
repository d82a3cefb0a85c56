"""The embedded tiny models: their shapes, the recall + text data they learn from, and how they were made.

``tools/pretrain_tiny.py`` trains them (once, on the CPU) and writes them under ``statex_dist/pretrained/``;
the main job (``statex_dist.demo``) and ``benchmarks/statex_vs_lpt.py`` start from them.

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

PRETRAINED = Path(__file__).resolve().parent / "pretrained"
BYTE_VOCAB = 258  # statex_dist.data.tokenizer.ByteTokenizer: 256 bytes, EOS 256, PAD 257
# MQAR's 256 ids get a block of their own after the bytes: with ids shared with text, MQAR keys (1-127)
# would be the letters of the text, and every recall step would pull their embeddings away from language
# (pretraining then raised the text perplexity 27 -> 104 on the tiny Mamba2).
MQAR_OFFSET = BYTE_VOCAB
VOCAB = MQAR_OFFSET + 256

# GLA: two layers of 8 heads of 8x8 (expand_k 1): merging layer 0's into one head of 64x64 grows its state 8x
# while layer 1 keeps the pretrained recall, as the paper expands a subset. With 4 heads of 16x16 (4x, as in
# GLA-1.3B) the pretrained model already recalled 0.44 at N=64, LPT kept most of that, and the merge lost more
# than the larger state won back in 1,500 steps; the earlier 1-layer tiny GLA (benchmarks/results/gla-1layer-
# seed0) is measured in BENCHMARKS.md. Mamba2: two layers, d_state 8 (grown 8x in layer 0): with d_state 16 it
# recalled 0.96 at N=32 by the time its text perplexity came down, leaving an expansion nothing to win at
# N <= 64. Both about 0.1-0.2M parameters.
CONFIGS = {
    "gla": {"arch": "gla", "vocab_size": VOCAB, "hidden_size": 64, "num_layers": 2, "num_heads": 8,
            "expand_k": 1.0, "expand_v": 1.0, "use_short_conv": True, "conv_size": 4, "hidden_ratio": 2,
            "tie_word_embeddings": True, "fuse_norm": True},
    "mamba2": {"arch": "mamba2", "vocab_size": VOCAB, "hidden_size": 64, "num_layers": 2, "d_state": 8,
               "headdim": 16, "expand": 2, "chunk_size": 64, "tie_word_embeddings": True},
}
GATE_BIAS = (1.0, 4.0)  # GLA gate bias U(1, 4): forget gates near 1 at the start, a long initial memory
PAIRS = (8, 16, 32, 64)


# The pretraining seed that ships, per architecture (tools/pretrain_tiny.py --seed): pretraining seeds differ a
# lot in how fast they leave the MQAR plateau, and the default should be one that did (BENCHMARKS.md). Their
# pretrain.json commands reproduce them bit for bit on the torch build and CPU they were made on; the
# Mamba2 was drawn with the initialisation of commit 0802ad9 (before one init per full tensor, the same at
# every layout) and reproduces at that commit.
SHIPPED_SEED = {"gla": 1, "mamba2": 0}


def pretrained_path(arch: str, seed: Optional[int] = None) -> Path:
    """The tiny model of ``arch`` pretrained with ``seed`` (default: the shipped one, in the package); other
    seeds live under runs/pretrained/ once tools/pretrain_tiny.py (or benchmarks/statex_vs_lpt.py) made them."""
    if seed is None or seed == SHIPPED_SEED[arch]:
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
    from statex_dist.data.tasks import TextWindows
    from statex_dist.eval.mqar import mqar_batch
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
    from statex_dist.data.tasks import TextWindows
    from statex_dist.eval.common import inference
    text = TextWindows(seed, n_docs=100)
    g = torch.Generator().manual_seed(0)
    total = 0.0
    with inference(model):
        for _ in range(batches_):
            x, y = text.batch(16, T, g)
            total += float(model(x, labels=y))
    return math.exp(total / batches_)


def cosine_lr(step: int, total: int, peak: float, floor: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * p))
