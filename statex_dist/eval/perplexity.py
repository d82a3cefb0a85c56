"""Token-weighted perplexity on held-out shards (a folder written by tools/make_shards.py).

ppl = exp(sum of token NLLs / number of tokens) over the first ``batches`` micro-batches of the folder's
fixed order (no shuffling), so the number depends only on (shard_dir, batches, micro_batch): not on TP, not
on the number of data-parallel ranks, which only split the batches between them.
"""
from __future__ import annotations

import inspect
import math
from typing import Optional

import torch
import torch.nn.functional as F

from statex_dist.data import build_loader
from statex_dist.eval.common import inference, segments, sum_over_ranks
from statex_dist.eval.config import EvalConfig

IGNORE = -100


def _takes_labels(model) -> bool:
    try:
        return "labels" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _batch_nll(model, ids: torch.Tensor, labels: torch.Tensor, use_labels: bool,
               segment_len: Optional[int] = None) -> tuple[float, float]:
    """(sum of NLL, tokens) of one batch; ids, labels [B, T]; segment by segment with ``segment_len``."""
    total = 0.0
    if use_labels:
        # the model's own loss: under TP it is computed vocab-parallel, no rank builds the full logits
        step = segment_len or ids.shape[1]
        for s, loss in segments(model, ids, segment_len, labels=labels):  # the mean over the segment's labels
            total += float(loss.double()) * float((labels[:, s:s + step] != IGNORE).sum())
        return total, float((labels != IGNORE).sum())
    for s, logits in segments(model, ids, segment_len):
        ys = labels[:, s:s + logits.shape[1]]
        nll = F.cross_entropy(logits.flatten(0, 1), ys.to(logits.device).flatten(), ignore_index=IGNORE,
                              reduction="none")
        total += float(nll.double().sum())  # fp32 per token, summed in fp64
    return total, float((labels != IGNORE).sum())


def evaluate_ppl(model: torch.nn.Module, shard_dir, batches: int = EvalConfig.ppl_batches,
                 micro_batch: int = EvalConfig.micro_batch, dp_rank: int = 0, dp_size: int = 1, dp_group=None,
                 use_labels: Optional[bool] = None, segment_len: Optional[int] = EvalConfig.segment_len) -> dict:
    """Perplexity of ``model`` on the first ``batches`` micro-batches [micro_batch, seq_len] of ``shard_dir``.

    use_labels: compute the loss with ``model(ids, labels=labels)`` (default: when the forward takes
    ``labels``); otherwise from ``model(ids)``'s logits. ``segment_len``: run the sequences in segments of that
    many tokens, carrying the recurrent state (statex_dist.eval.common.segments).
    Returns {"ppl", "loss" (mean NLL per token, nats), "tokens"}.
    """
    if use_labels is None:
        use_labels = _takes_labels(model)
    loader = build_loader(shard_dir, dp_rank=0, dp_size=1, micro_batch=micro_batch, seed=0, workers=0,
                          shuffle_buffer=0, epochs=1)
    sums = torch.zeros(2, dtype=torch.float64)
    with inference(model):
        for i, b in enumerate(loader):
            if i >= batches:
                break
            if i % dp_size == dp_rank:
                sums += torch.tensor(_batch_nll(model, b["input_ids"], b["labels"], use_labels, segment_len),
                                     dtype=torch.float64)
    sums = sum_over_ranks(sums, dp_size, dp_group)
    if sums[1] == 0:
        raise ValueError(f"{shard_dir}: no tokens evaluated (batches={batches})")
    loss = float(sums[0] / sums[1])
    return {"ppl": math.exp(loss), "loss": loss, "tokens": int(sums[1])}
