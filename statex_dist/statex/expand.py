"""``expand_tensor``: one parameter of the original model -> the same parameter of the expanded model.

It sees one tensor at a time, so a streaming tool can expand a checkpoint of any size shard by shard
(full, unsharded tensors: the reshard tool gathers a parameter, expands it, splits it again).
"""
from __future__ import annotations

import re
from typing import Iterable, Iterator

import torch

from statex_dist import archs
from statex_dist.models.config import ModelConfig
from statex_dist.statex.plan import ExpansionPlan

_LAYER = re.compile(r"layers\.(\d+)\.(.+)")


def _check_configs(layer: int, old: ModelConfig, new: ModelConfig, plan: ExpansionPlan) -> None:
    # catches a new_config that was not made by expand_config(old_config, plan)
    if archs.of(old) is not archs.of(new) or old.num_layers != new.num_layers:
        raise ValueError(f"new_config ({new.arch}, {new.num_layers} layers) does not match old_config "
                         f"({old.arch}, {old.num_layers} layers)")
    expansion = archs.of(old).expansion
    if getattr(new, expansion.per_layer)[layer] != getattr(plan, expansion.option):
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
    return archs.of(old_config).expansion.expand_layer(name, local, tensor, layer, old_config, new_config, plan)


def expand_tensors(tensors: Iterable[tuple[str, torch.Tensor]], old_config: ModelConfig,
                   new_config: ModelConfig, plan: ExpansionPlan) -> Iterator[tuple[str, torch.Tensor]]:
    """``expand_tensor`` over (name, tensor) pairs, lazily: one tensor in flight at a time."""
    for name, t in tensors:
        yield name, expand_tensor(name, t, old_config, new_config, plan)
