"""Where a run's first weights come from: a checkpoint (HF or sharded, optionally StateX-expanded on the
way in, with the same functions as tools/reshard_expand.py) or a fresh init; and how they reach a model's
TP / PP shards one tensor at a time."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from statex_dist.config import ModelConfig, config_from_dict
from statex_dist.models import specs_for
from statex_dist.models.init import copy_shards, fresh_weights
from statex_dist.models.names import named_internal_parameters
from statex_dist.statex import ExpansionPlan, choose_layers, expand_config, expand_tensor


@dataclass
class WeightSource:
    config: ModelConfig                      # the config of the model that trains (after expansion)
    get: Callable[[str], torch.Tensor]       # internal name -> full tensor (checkpoint shape)
    description: str
    base_config: ModelConfig                 # before expansion
    plan: Optional[ExpansionPlan] = None


def expansion_plan(run_cfg, config: ModelConfig) -> Optional[ExpansionPlan]:
    e = run_cfg.expansion
    if not e.enabled:
        return None
    layers = choose_layers(config.num_layers, every=e.every, layers=e.layers)
    if config.arch == "gla":
        return ExpansionPlan(layers=layers, gla_heads=e.gla_heads, init=e.init, seed=e.seed,
                             gate_bias_init=tuple(e.gate_bias_init) if e.gate_bias_init else None)
    d_state = e.d_state or 4 * max(config.d_state[i] for i in layers)
    return ExpansionPlan(layers=layers, d_state=d_state, init=e.init, seed=e.seed)


def weight_source(run_cfg) -> WeightSource:
    """``model.source``: a checkpoint path, or ``scratch`` with ``model.config`` (a model config dict)."""
    m = run_cfg.model
    if m.source == "scratch":
        if not m.config:
            raise ValueError("model.source=scratch needs model.config (arch, sizes)")
        config = config_from_dict(m.config)
        gate = tuple(m.gate_bias_init) if m.gate_bias_init else None
        base, desc = config, f"fresh {config.arch} (seed {run_cfg.seed})"
        fetch = fresh_weights(config, run_cfg.seed, gate)
    else:
        from statex_dist.checkpoint.sources import open_source
        src = open_source(m.source)
        base, desc, fetch = src.config, str(m.source), src.get
    plan = expansion_plan(run_cfg, base)
    if plan is None:
        return WeightSource(base, fetch, desc, base)
    new = expand_config(base, plan)
    return WeightSource(new, lambda n: expand_tensor(n, fetch(n), base, new, plan),
                        f"{desc}, StateX {plan.init} of layers {list(plan.layers)}", base, plan)


def fill(model: nn.Module, source: WeightSource, tp_rank: int, tp: int) -> None:
    """Copy this rank's slice of every parameter it holds from the source, one full tensor at a time."""
    copy_shards(named_internal_parameters(model), source.get, specs_for(source.config, tp), tp_rank, tp)
