"""Sizes of a model from its config alone (no model is built): parameters and recurrent state."""
from __future__ import annotations

import math

from statex_dist.models import specs_for
from statex_dist.models.config import ModelConfig


def count_params(config: ModelConfig) -> int:
    """Parameters of the model at TP=1 (embedding rows padded as stored; counted once when tied)."""
    return sum(math.prod(s.shape) for s in specs_for(config, 1).values())


def state_floats(config: ModelConfig) -> int:
    """Recurrent-state floats of one sequence, all layers: GLA sum d_k*d_v/H, Mamba2 sum d_inner*N
    (the short-conv caches are not counted)."""
    return sum(config.state_size(i) for i in range(config.num_layers))


def summary(old: ModelConfig, new: ModelConfig) -> str:
    """One line: parameters and recurrent-state size before and after an expansion."""
    p0, p1, s0, s1 = count_params(old), count_params(new), state_floats(old), state_floats(new)
    layers = new.expanded_layers
    return (f"{new.arch}: params {p0:,} -> {p1:,} ({p1 - p0:+,}, {100 * (p1 - p0) / p0:+.3f}%); "
            f"recurrent state {s0:,} -> {s1:,} floats per sequence (x{s1 / s0:.2f}); "
            f"expanded layers {layers}")
