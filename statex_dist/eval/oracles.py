"""Reference "models" whose scores are known in advance, to check the evaluations themselves.

Both follow the ``model(input_ids [B, T]) -> logits [B, T, V]`` contract of the real models.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class UniformModel(nn.Module):
    """Equal logits everywhere: perplexity is exactly ``vocab``; argmax is token 0 (never a MQAR value or a
    digit, so retrieval accuracy is 0)."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*input_ids.shape, self.vocab)


class InductionOracle(nn.Module):
    """Predicts, at every position t, the token that followed the longest earlier match of the context
    ending at t (the most recent one among equally long matches), with all mass on it: a perfect
    induction head. It solves MQAR (each query key occurred once before, followed by its value) and
    passkey (the question ends with the needle's "The pass key is"). Without any earlier match it predicts
    token 0.

    ``max_match`` caps the match length (tokens). Cost O(T^2 x max_match) per row: for tests.
    """

    def __init__(self, vocab: int, max_match: int = 32):
        super().__init__()
        self.vocab, self.max_match = vocab, max_match

    def next_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] -> the predicted next token at every position [T]."""
        T = ids.shape[0]
        eq = ids[:, None] == ids[None, :]                                  # [t, s]: ids[t] == ids[s]
        pos = torch.arange(T)
        eq &= pos[None, :] < pos[:, None]                                  # s < t: s + 1 is already seen
        run, length = eq.clone(), eq.to(torch.int16)
        for j in range(1, self.max_match):
            shifted = torch.zeros_like(eq)
            shifted[j:, j:] = eq[:-j, :-j]                                  # ids[t-j] == ids[s-j]
            run &= shifted
            if not run.any():
                break
            length += run
        score = length.long() * (T + 1) + pos                         # longest, then most recent
        score[length == 0] = -1
        best = score.argmax(1)
        nxt = ids[(best + 1).clamp_max(T - 1)]
        return torch.where(length.amax(1) > 0, nxt, torch.zeros_like(nxt))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # many small ops: handing them to a thread pool costs more than it saves
        try:
            nxt = torch.stack([self.next_tokens(row) for row in input_ids.cpu()])
        finally:
            torch.set_num_threads(threads)
        return torch.nn.functional.one_hot(nxt, self.vocab).float() * 100.0
