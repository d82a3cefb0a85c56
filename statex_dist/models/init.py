"""Fresh weights for a model trained from scratch, one full tensor at a time and keyed by name.

Each tensor comes from its own generator, seeded by (seed, name) (statex_dist.statex.tensors.generator), and
is drawn at its full checkpoint shape; a rank keeps its shard. So every TP x PP layout holds the same model,
bit for bit, and no rank draws what it does not hold. One scheme per architecture, the source library's
(``archs.of(config).init_tensor``: statex_dist/archs/<name>/init.py).
"""
from __future__ import annotations

from typing import Callable

import torch

from statex_dist import archs
from statex_dist.models.config import ModelConfig
from statex_dist.models.layout import specs_for
from statex_dist.parallel import state
from statex_dist.parallel.weights import copy_shards


def init_tensor(name: str, shape: tuple[int, ...], config: ModelConfig, seed: int = 0, **options) -> torch.Tensor:
    """The initial fp32 value of parameter ``name`` (internal name) with full shape ``shape``.

    ``options``: the architecture's (``init_options``: GLA ``gate_bias``; Mamba2 ``dt_range``, ``a_range``);
    ValueError for one it does not take.
    """
    arch = archs.of(config)
    unknown = sorted(set(options) - set(arch.init_options))
    if unknown:
        raise ValueError(f"the {arch.name} initialisation takes the options {list(arch.init_options)}, not {unknown}")
    return arch.init_tensor(name, shape, config, seed, **options)


def fresh_weights(config: ModelConfig, seed: int = 0, **options) -> Callable[[str], torch.Tensor]:
    """name -> its initial full tensor at checkpoint shape (``ShardSpec.checkpoint_shape``)."""
    specs = specs_for(config, 1)
    return lambda name: init_tensor(name, specs[name].checkpoint_shape, config, seed, **options)


def initialize(model: torch.nn.Module, config: ModelConfig, seed: int = 0) -> None:
    """Draw a one-module model's weights (this process's TP shard) from the architecture's scheme."""
    tp = state.tp_size()
    copy_shards(model.named_parameters(), fresh_weights(config, seed), specs_for(config, tp), state.tp_rank(), tp)
