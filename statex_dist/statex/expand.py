"""``expand_tensor``: one parameter of the original model -> the same parameter of the expanded model.

It sees one tensor at a time, so a streaming tool can expand a checkpoint of any size shard by shard
(full, unsharded tensors: the reshard tool gathers a parameter, expands it, splits it again).
"""
from __future__ import annotations

import re
from typing import Iterable, Iterator

import torch

from statex_dist.models.config import GLAConfig, ModelConfig
from statex_dist.statex.gla import expand_gla_layer
from statex_dist.statex.mamba2 import expand_mamba2_layer
from statex_dist.statex.plan import ExpansionPlan

_LAYER = re.compile(r"layers\.(\d+)\.(.+)")


def _check_configs(layer: int, old: ModelConfig, new: ModelConfig, plan: ExpansionPlan) -> None:
    # catches a new_config that was not made by expand_config(old_config, plan)
    if old.arch != new.arch or old.num_layers != new.num_layers:
        raise ValueError(f"new_config ({new.arch}, {new.num_layers} layers) does not match old_config "
                         f"({old.arch}, {old.num_layers} layers)")
    if isinstance(old, GLAConfig):
        ok = new.num_heads[layer] == plan.gla_heads
    else:
        ok = new.d_state[layer] == plan.d_state
    if not ok:
        raise ValueError(f"layer {layer}: new_config was not made by expand_config(old_config, plan)")


@torch.no_grad()
def expand_tensor(name: str, tensor: torch.Tensor, old_config: ModelConfig, new_config: ModelConfig,
                  plan: ExpansionPlan) -> torch.Tensor:
    """The full tensor of parameter ``name`` (internal name, e.g. ``layers.3.attn.q_proj.weight``) in
    the model of ``new_config = expand_config(old_config, plan)``.

    ``tensor`` is the full original tensor. Parameters outside ``plan.layers`` (and those the plan keeps)
    are returned as they are (the same object); new tensors have ``tensor``'s dtype and device. Random
    values depend only on (plan.seed, name).
    """
    m = _LAYER.fullmatch(name)
    if m is None or int(m.group(1)) not in plan.layers:
        return tensor
    layer, local = int(m.group(1)), m.group(2)
    _check_configs(layer, old_config, new_config, plan)
    expand = expand_gla_layer if isinstance(old_config, GLAConfig) else expand_mamba2_layer
    return expand(name, local, tensor, layer, old_config, new_config, plan)


def expand_tensors(tensors: Iterable[tuple[str, torch.Tensor]], old_config: ModelConfig,
                   new_config: ModelConfig, plan: ExpansionPlan) -> Iterator[tuple[str, torch.Tensor]]:
    """``expand_tensor`` over (name, tensor) pairs, lazily: one tensor in flight at a time."""
    for name, t in tensors:
        yield name, expand_tensor(name, t, old_config, new_config, plan)
