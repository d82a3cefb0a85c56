"""Retrieval over a (context length x depth) grid: the scoring shared by passkey and NIAH.

An example is a sequence of exactly ``length`` tokens whose last A tokens are the answer. It is scored by
teacher forcing: the answer counts as retrieved when the argmax at every answer position is the answer
token. That equals "greedy decoding reproduces the whole answer" (greedy decoding emits the first answer
token iff the first argmax is right, and then sees the same prefix as teacher forcing), at the cost of one
forward pass instead of A.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from statex_dist.eval.common import inference, logits_at, my_share, score_selected, sum_over_ranks

# (length, depth, example index) -> (token ids of exactly ``length``, answer length A)
MakeExample = Callable[[int, float, int], tuple[list[int], int]]


def insert_at_depth(filler: list[list[int]], total: int, depth: float, pieces: dict[float, list[int]]) -> list[int]:
    """Concatenate whole filler units (e.g. sentences, already tokenised) up to exactly ``total`` tokens,
    with each piece in ``pieces`` ({depth in [0, 1]: token ids}) inserted between two units.

    The filler is cut to size at its start (so the text before the question ends with a whole unit); a
    piece goes to the unit boundary nearest ``depth`` x (filler tokens). The result has ``total`` tokens.
    """
    need = total - sum(len(p) for p in pieces.values())
    if need < 0:
        raise ValueError(f"{total} tokens cannot hold the inserted pieces ({total - need} tokens)")
    units, n, i = [], 0, 0
    while n < need:
        u = filler[i % len(filler)]
        units.append(u)
        n += len(u)
        i += 1
    flat, starts = [], []
    for u in units:
        starts.append(len(flat))
        flat.extend(u)
    cut = len(flat) - need
    flat = flat[cut:]
    bounds = sorted({0, need} | {s - cut for s in starts if s - cut > 0})
    at = {}
    for d, piece in sorted(pieces.items()):
        b = min(bounds, key=lambda x: (abs(x - d * need), x))
        at.setdefault(b, []).extend(piece)
    out, prev = [], 0
    for b in sorted(at):
        out += flat[prev:b] + at[b]
        prev = b
    return out + flat[prev:]


def evaluate_grid(model: torch.nn.Module, make_example: MakeExample, lengths: Sequence[int],
                  depths: Sequence[float], n: int, batch: int, dp_rank: int = 0, dp_size: int = 1,
                  dp_group=None, segment_len: Optional[int] = None) -> dict:
    """Score ``n`` examples per (length, depth) cell.

    ``segment_len``: run each example in segments of that many tokens, carrying the recurrent state
    (:func:`statex_dist.eval.common.segments`): any length in memory that does not grow with it.

    Returns {"lengths", "depths", "accuracy", "token_accuracy", "nll"}: the last three are
    [len(lengths)][len(depths)] lists: whole-answer accuracy, per-answer-token accuracy, and the mean NLL
    (nats) of the answer tokens. Data-parallel ranks score a share of the batches; the sums are reduced.
    """
    cells = [(L, d) for L in lengths for d in depths]
    # per cell: answers right, answer tokens right, answer tokens, nll sum, examples
    sums = torch.zeros(len(cells), 5, dtype=torch.float64)
    jobs = [(c, j) for c in range(len(cells)) for j in range(0, n, batch)]
    with inference(model):
        for k in my_share(len(jobs), dp_rank, dp_size):
            c, j0 = jobs[k]
            L, d = cells[c]
            examples = [make_example(L, d, j) for j in range(j0, min(n, j0 + batch))]
            A = examples[0][1]
            if any(len(ids) != L or a != A for ids, a in examples):
                raise ValueError(f"cell (length {L}, depth {d}): examples differ in length or answer size")
            ids = torch.tensor([e[0] for e in examples], dtype=torch.long)            # [B, L]
            pos = torch.arange(L - A - 1, L - 1).expand(len(examples), A)           # [B, A]
            correct, nll = score_selected(logits_at(model, ids, pos, segment_len), ids.gather(1, pos + 1))
            sums[c] += torch.tensor([float(correct.all(1).sum()), float(correct.sum()), float(correct.numel()),
                                     float(nll.sum()), float(len(examples))], dtype=torch.float64)
    sums = sum_over_ranks(sums, dp_size, dp_group)
    shape = (len(lengths), len(depths))

    def grid(v):
        return v.reshape(shape).tolist()

    return {"lengths": [int(L) for L in lengths], "depths": [float(d) for d in depths],
            "accuracy": grid(sums[:, 0] / sums[:, 4]), "token_accuracy": grid(sums[:, 1] / sums[:, 2]),
            "nll": grid(sums[:, 3] / sums[:, 2])}

