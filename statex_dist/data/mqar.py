"""Multi-query associative recall (MQAR) sequences, after Zoology (Arora et al., 2023), in miniature: the
sampler that both the training task shards (statex_dist.data.tasks) and the evaluation
(statex_dist.eval.mqar) draw from.

Token ids (before ``vocab_offset``): keys 1-127, values 128-255, 0 pads. A sequence of N pairs is
``k1 v1 ... kN vN`` followed by all N keys again in a random order, each followed by its value: T = 4N.
Keys and values are drawn without replacement within a sequence, so a key names exactly one value.
Loss and accuracy count only the query positions: the logits at a repeated key must predict its value.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

KEYS = range(1, 128)
VALUES = range(128, 256)
PAD = 0
IGNORE = -100

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
