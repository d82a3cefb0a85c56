"""Passkey retrieval: a random number hidden at a chosen depth of repeated filler text, asked at the end.

    <intro> <filler ...> The pass key is 52817. Remember it. 52817 is the pass key. <filler ...>
    What is the pass key? The pass key is 52817

Every example is exactly ``length`` tokens, the answer digits being the last ones; depth 0 puts the
needle right after the intro, depth 1 right before the question (at the nearest sentence boundary).
Scoring: see :mod:`statex_dist.eval.grid` (teacher-forced argmax on every digit, equal to greedy decoding
of the whole number).
"""
from __future__ import annotations

import random
from typing import Optional, Sequence

import torch

from statex_dist.eval.common import encoder, mix_seed
from statex_dist.eval.config import EvalConfig
from statex_dist.eval.grid import evaluate_grid, insert_at_depth

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important information there. ")
FILLER = ("The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ",
          "There and back again. ")
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is "


class PasskeyTask:
    """Builds the examples; ``example(length, depth, i)`` -> (ids of ``length`` tokens, digits)."""

    def __init__(self, tokenizer="bytes", digits: int = 5, seed: int = 0):
        self.encode, self.digits, self.seed = encoder(tokenizer), digits, seed
        self.intro, self.question = self.encode(INTRO), self.encode(QUESTION)
        self.filler = [self.encode(s) for s in FILLER]

    def key(self, length: int, depth: float, i: int) -> str:
        rng = random.Random(mix_seed(self.seed, length, round(depth * 1e6), i))
        return str(rng.randint(10 ** (self.digits - 1), 10 ** self.digits - 1))

    def example(self, length: int, depth: float, i: int) -> tuple[list[int], int]:
        key = self.key(length, depth, i)
        needle, answer = self.encode(NEEDLE.format(key=key)), self.encode(key)
        body = length - len(self.intro) - len(self.question) - len(answer)
        if body < len(needle):
            raise ValueError(f"passkey: length {length} is too short; the fixed text needs "
                             f"{length - body + len(needle)} tokens")
        ids = self.intro + insert_at_depth(self.filler, body, depth, {depth: needle}) + self.question + answer
        return ids, len(answer)


def evaluate_passkey(model: torch.nn.Module, lengths: Sequence[int] = EvalConfig.lengths,
                     depths: Sequence[float] = EvalConfig.depths, n: int = EvalConfig.grid_n,
                     tokenizer=EvalConfig.tokenizer, digits: int = EvalConfig.passkey_digits, batch: int = 8,
                     seed: int = EvalConfig.seed, dp_rank: int = 0, dp_size: int = 1, dp_group=None,
                     segment_len: Optional[int] = EvalConfig.segment_len) -> dict:
    """Passkey accuracy over lengths (tokens per example, answer included) x needle depths.

    Returns {"lengths", "depths", "accuracy", "token_accuracy", "nll"}, grids [len(lengths)][len(depths)]
    (see :func:`statex_dist.eval.grid.evaluate_grid`). ``tokenizer``: "bytes" (ids 0-255), a tokenizer
    folder, or a tokenizer object. ``segment_len``: run each example in segments of that many tokens,
    carrying the recurrent state (any length; memory does not grow with it).
    """
    task = PasskeyTask(tokenizer, digits, seed)
    return evaluate_grid(model, task.example, lengths, depths, n, batch, dp_rank, dp_size, dp_group,
                         segment_len)
