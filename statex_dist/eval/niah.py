"""Needle in a haystack with distractors: key-value facts in a random-word haystack, one asked at the end.

The haystack is Zipf-distributed random words (the lexicon of :mod:`statex_dist.data.synthetic`); facts use
the synthetic corpus's own phrasing, so a model trained on that corpus meets a familiar question:

    <words ...> the code of kel is 4821. <words ...> the code of mab is 7302. <words ...>
    what is the code of kel? 4821

The needle sits at the word boundary nearest ``depth``; ``distractors`` facts about other keys sit at random
depths. Every example is exactly ``length`` tokens, the value's digits being the last ones. Scoring: see
:mod:`statex_dist.eval.grid`.
"""
from __future__ import annotations

import random
from typing import Optional, Sequence

import torch

from statex_dist.data.synthetic import _lexicon
from statex_dist.eval.common import encoder, mix_seed
from statex_dist.eval.config import EvalConfig
from statex_dist.eval.grid import evaluate_grid, insert_at_depth

FACT = "the code of {key} is {value}. "
QUESTION = "what is the code of {key}? "
LEXICON = 2000
HAYSTACK_WORDS = 512  # distinct filler units: the haystack cycles through them


class NIAHTask:
    """Builds the examples; ``example(length, depth, i)`` -> (ids of ``length`` tokens, value tokens)."""

    def __init__(self, tokenizer="bytes", distractors: int = 3, seed: int = 0):
        self.encode, self.distractors, self.seed = encoder(tokenizer), distractors, seed
        self.lexicon = _lexicon(random.Random(mix_seed(seed, 1)), LEXICON)
        self.weights = [1.0 / (i + 1) for i in range(LEXICON)]

    def example(self, length: int, depth: float, i: int) -> tuple[list[int], int]:
        rng = random.Random(mix_seed(self.seed, length, round(depth * 1e6), i))
        words = rng.choices(self.lexicon, self.weights, k=HAYSTACK_WORDS)
        keys = rng.sample(self.lexicon, self.distractors + 1)
        values = [rng.randint(1000, 9999) for _ in keys]
        facts = {depth: self.encode(FACT.format(key=keys[0], value=values[0]))}
        for k, v in zip(keys[1:], values[1:]):
            d = rng.random()
            while d in facts:  # distinct slots; the needle's depth is the caller's
                d = rng.random()
            facts[d] = self.encode(FACT.format(key=k, value=v))
        question, answer = self.encode(QUESTION.format(key=keys[0])), self.encode(str(values[0]))
        body = length - len(question) - len(answer)
        if body < sum(len(f) for f in facts.values()):
            raise ValueError(f"niah: length {length} is too short for {len(facts)} facts and the question")
        filler = [self.encode(w + " ") for w in words]
        return insert_at_depth(filler, body, depth, facts) + question + answer, len(answer)


def evaluate_niah(model: torch.nn.Module, lengths: Sequence[int] = EvalConfig.lengths,
                  depths: Sequence[float] = EvalConfig.depths, n: int = EvalConfig.grid_n,
                  tokenizer=EvalConfig.tokenizer, distractors: int = EvalConfig.niah_distractors, batch: int = 8,
                  seed: int = EvalConfig.seed, dp_rank: int = 0, dp_size: int = 1, dp_group=None,
                  segment_len: Optional[int] = EvalConfig.segment_len) -> dict:
    """NIAH accuracy over lengths x needle depths; same output as :func:`evaluate_passkey`."""
    task = NIAHTask(tokenizer, distractors, seed)
    return evaluate_grid(model, task.example, lengths, depths, n, batch, dp_rank, dp_size, dp_group,
                         segment_len)
