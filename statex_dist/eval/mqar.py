"""Multi-query associative recall (MQAR), after Zoology (Arora et al., 2023), in its miniature form.

Token ids (before ``vocab_offset``): keys 1-127, values 128-255, 0 pads. A sequence of N pairs is
``k1 v1 ... kN vN`` followed by all N keys again in a random order, each followed by its value: T = 4N.
Keys and values are drawn without replacement within a sequence, so a key names exactly one value.
Loss and accuracy count only the query positions: the logits at a repeated key must predict its value.
A model that only learnt "some value comes next" scores 1/128 (or 1/N if it picks values seen in context).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from statex_dist.eval.common import inference, logits_of, mix_seed, my_share, sum_over_ranks
from statex_dist.eval.config import EvalConfig

KEYS = range(1, 128)
VALUES = range(128, 256)
PAD = 0
IGNORE = -100
# Evaluation sets are drawn from seeds no training stream of mqar_batch(seed=s) uses for small s.
_EVAL_STREAM = 7_777
# the key of the pretraining record (tools/pretrain_tiny.py) naming the offset its MQAR data used
OFFSET_KEY = "mqar_vocab_offset"


def trained_vocab_offset(checkpoint: Union[str, os.PathLike]) -> int:
    """Where the model at ``checkpoint`` (an HF folder, a sharded checkpoint, a training checkpoint's
    ``model/``) has its MQAR 0-255 block: the offset its pretraining record names, else 0."""
    from statex_dist.checkpoint.side_files import PRETRAIN_RECORD, side_files_of
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


def _generator(seed: Union[int, torch.Generator]) -> torch.Generator:
    return seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))


def _rows(n: int, b: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``b`` sequences of ``n`` pairs: (ids [b, 4n], labels [b, 4n]) in offset-free ids."""
    keys = torch.rand(b, len(KEYS), generator=g).argsort(1)[:, :n] + KEYS.start          # [b, n] distinct
    vals = torch.rand(b, len(VALUES), generator=g).argsort(1)[:, :n] + VALUES.start      # [b, n] distinct
    order = torch.rand(b, n, generator=g).argsort(1)                                    # query order
    qk, qv = keys.gather(1, order), vals.gather(1, order)
    ids = torch.cat([torch.stack([keys, vals], 2).reshape(b, 2 * n),
                     torch.stack([qk, qv], 2).reshape(b, 2 * n)], 1)
    labels = torch.full_like(ids, IGNORE)
    labels[:, 2 * n::2] = qv  # the logits at each queried key predict the value that follows it
    return ids, labels


def mqar_batch(n_pairs: Union[int, Sequence[int]], batch: int, seed: Union[int, torch.Generator] = 0,
               vocab_offset: int = 0, weights: Optional[Sequence[float]] = None,
               seq_len: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A training (or evaluation) batch of MQAR sequences.

    n_pairs:      N, or several N: each row draws its own N (uniformly, or with ``weights``).
    seed:         an int (the same batch every call) or a ``torch.Generator`` (a stream: pass the same
                  generator every step).
    vocab_offset: added to every id, to place the 0-255 block inside a larger vocabulary (the byte
                  tokenizer's 0-255 fits with offset 0).
    seq_len:      T; default 4 * max(n_pairs). Shorter rows are right-padded with token 0 (label -100),
                  which a causal model never sees before its real tokens.
    Returns input_ids [batch, T] and labels [batch, T] (LongTensor): ``labels[b, t] = input_ids[b, t + 1]``
    at every query key, -100 elsewhere; the model's ``labels=`` loss then is the query-only MQAR loss.
    """
    ns = [int(n) for n in n_pairs] if isinstance(n_pairs, (list, tuple, range)) else [int(n_pairs)]
    if not ns or min(ns) < 1 or max(ns) > len(KEYS):
        raise ValueError(f"n_pairs {n_pairs}: each N must be in 1..{len(KEYS)} (distinct keys 1-127)")
    T = seq_len or 4 * max(ns)
    if T < 4 * max(ns):
        raise ValueError(f"seq_len {T} is shorter than 4 x {max(ns)} pairs")
    g = _generator(seed)
    if len(ns) == 1:
        row_n = torch.full((batch,), ns[0])
    else:
        w = torch.as_tensor(weights if weights is not None else [1.0] * len(ns), dtype=torch.float)
        if w.shape != (len(ns),):
            raise ValueError(f"weights has {w.numel()} entries for {len(ns)} values of n_pairs")
        row_n = torch.as_tensor(ns)[torch.multinomial(w, batch, replacement=True, generator=g)]
    ids = torch.full((batch, T), PAD, dtype=torch.long)
    labels = torch.full((batch, T), IGNORE, dtype=torch.long)
    for n in sorted(set(row_n.tolist())):
        rows = (row_n == n).nonzero()[:, 0]
        i, lab = _rows(n, len(rows), g)
        ids[rows, :4 * n], labels[rows, :4 * n] = i, lab
    if vocab_offset:
        ids += vocab_offset
        labels = torch.where(labels == IGNORE, labels, labels + vocab_offset)
    return ids, labels


def mqar_eval_set(n_pairs: int, n: int = EvalConfig.mqar_n, seed: int = EvalConfig.seed,
                  vocab_offset: int = EvalConfig.vocab_offset):
    """The fixed evaluation set for ``n_pairs``: (input_ids [n, 4N], labels [n, 4N])."""
    g = torch.Generator().manual_seed(mix_seed(_EVAL_STREAM, seed, n_pairs))
    return mqar_batch(n_pairs, n, g, vocab_offset=vocab_offset)


def evaluate_mqar(model: torch.nn.Module, pairs: Sequence[int] = EvalConfig.mqar_pairs,
                  n: int = EvalConfig.mqar_n, batch: int = 64, seed: int = EvalConfig.seed,
                  vocab_offset: int = EvalConfig.vocab_offset, dp_rank: int = 0, dp_size: int = 1,
                  dp_group=None) -> dict[int, float]:
    """Query accuracy (greedy argmax over the whole vocabulary) on ``n`` fixed sequences per N.

    Any module mapping input_ids [B, T] to logits [B, T, V >= vocab_offset + 256] works. Under data
    parallelism each rank scores a share of the batches and the counts are summed (same numbers as one
    rank); every TP rank of a group computes the same batches.
    Returns {N: accuracy}.
    """
    out = {}
    with inference(model):
        for N in pairs:
            ids, labels = mqar_eval_set(N, n, seed, vocab_offset)
            counts = torch.zeros(2, dtype=torch.float64)  # correct, queries
            for i in my_share(-(-n // batch), dp_rank, dp_size):
                x, y = ids[i * batch:(i + 1) * batch], labels[i * batch:(i + 1) * batch]
                pred = logits_of(model, x).argmax(-1).cpu()
                mask = y != IGNORE
                counts += torch.tensor([float((pred == y)[mask].sum()), float(mask.sum())], dtype=torch.float64)
            counts = sum_over_ranks(counts, dp_size, dp_group)
            out[int(N)] = float(counts[0] / counts[1])
    return out
