"""Multi-query associative recall (MQAR) as an evaluation: held-out sets and the accuracy at each N.

The sequences and their format come from statex_dist.data.mqar. A model that only learnt "some value comes
next" scores 1/128 (or 1/N if it picks values seen in context).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from statex_dist.checkpoint.side_files import PRETRAIN_RECORD, side_files_of
from statex_dist.data.mqar import IGNORE, KEYS, PAD, VALUES, mqar_batch  # noqa: F401 (re-exported)
from statex_dist.eval.common import inference, mix_seed, my_share, segments, sum_over_ranks
from statex_dist.eval.config import EvalConfig

# Evaluation sets are drawn from seeds no training stream of mqar_batch(seed=s) uses for small s.
_EVAL_STREAM = 7_777
# the key of the pretraining record (tools/pretrain_tiny.py) naming the offset its MQAR data used
OFFSET_KEY = "mqar_vocab_offset"


def trained_vocab_offset(checkpoint: Union[str, os.PathLike]) -> int:
    """Where the model at ``checkpoint`` (an HF folder, a sharded checkpoint, a training checkpoint's
    ``model/``) has its MQAR 0-255 block: the offset its pretraining record names, else 0."""
    record = side_files_of(Path(checkpoint)) / PRETRAIN_RECORD  # reshard and training checkpoints carry it
    if not record.is_file():
        return EvalConfig.vocab_offset
    try:
        data = json.loads(record.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{record}: cannot read the pretraining record ({getattr(e, 'strerror', None) or e}); "
                         f"it names the model's MQAR vocabulary offset: repair it, delete it or pass the "
                         f"offset (--vocab-offset / eval.vocab_offset)") from None
    offset = data.get(OFFSET_KEY, EvalConfig.vocab_offset) if isinstance(data, dict) else data
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise ValueError(f"{record}: {OFFSET_KEY} is {offset!r}; expected an integer >= 0 in a JSON object (or "
                         f"pass the offset: --vocab-offset / eval.vocab_offset)")
    return offset


def mqar_eval_set(n_pairs: int, n: int = EvalConfig.mqar_n, seed: int = EvalConfig.seed,
                  vocab_offset: int = EvalConfig.vocab_offset):
    """The fixed evaluation set for ``n_pairs``: (input_ids [n, 4N], labels [n, 4N])."""
    g = torch.Generator().manual_seed(mix_seed(_EVAL_STREAM, seed, n_pairs))
    return mqar_batch(n_pairs, n, g, vocab_offset=vocab_offset)


def evaluate_mqar(model: torch.nn.Module, pairs: Sequence[int] = EvalConfig.mqar_pairs,
                  n: int = EvalConfig.mqar_n, batch: int = 64, seed: int = EvalConfig.seed,
                  vocab_offset: int = EvalConfig.vocab_offset, dp_rank: int = 0, dp_size: int = 1,
                  dp_group=None, segment_len: Optional[int] = EvalConfig.segment_len) -> dict[int, float]:
    """Query accuracy (greedy argmax over the whole vocabulary) on ``n`` fixed sequences per N.

    Any module mapping input_ids [B, T] to logits [B, T, V >= vocab_offset + 256] works. Under data
    parallelism each rank scores a share of the batches and the counts are summed (same numbers as one
    rank); every TP rank of a group computes the same batches. ``segment_len``: run the sequences in
    segments of that many tokens, carrying the recurrent state (statex_dist.eval.common.segments).
    Returns {N: accuracy}.
    """
    out = {}
    with inference(model):
        for N in pairs:
            ids, labels = mqar_eval_set(N, n, seed, vocab_offset)
            counts = torch.zeros(2, dtype=torch.float64)  # correct, queries
            for i in my_share(-(-n // batch), dp_rank, dp_size):
                x, y = ids[i * batch:(i + 1) * batch], labels[i * batch:(i + 1) * batch]
                for s, logits in segments(model, x, segment_len):
                    pred, ys = logits.argmax(-1).cpu(), y[:, s:s + logits.shape[1]]
                    mask = ys != IGNORE
                    counts += torch.tensor([float((pred == ys)[mask].sum()), float(mask.sum())],
                                           dtype=torch.float64)
            counts = sum_over_ranks(counts, dp_size, dp_group)
            out[int(N)] = float(counts[0] / counts[1])
    return out
