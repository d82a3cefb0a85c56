"""Where a run's first weights come from: a checkpoint (HF or sharded, optionally StateX-expanded on the
way in, with the same functions as tools/reshard_expand.py) or a fresh init; and how they reach a model's
TP / PP shards one tensor at a time."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn

from statex_dist import archs
from statex_dist.checkpoint.sources import hf_origin, open_source
from statex_dist.models import specs_for
from statex_dist.models.config import ModelConfig, config_from_dict
from statex_dist.models.init import copy_shards, fresh_weights
from statex_dist.models.names import named_internal_parameters
from statex_dist.statex import ExpansionPlan, expand_config, expand_tensor


@dataclass
class WeightSource:
    config: ModelConfig                      # the config of the model that trains (after expansion)
    get: Callable[[str], torch.Tensor]       # internal name -> full tensor (checkpoint shape)
    description: str
    base_config: ModelConfig                 # before expansion
    plan: Optional[ExpansionPlan] = None
    hf: Optional[dict] = None                # the source's HF format and config.json, for exports of the run


def expansion_plan(run_cfg, config: ModelConfig) -> Optional[ExpansionPlan]:
    e = run_cfg.expansion
    if not e.enabled:
        return None
    sizes = {}
    for a in archs.ARCHS.values():   # an option's earlier names (expansion.gla_heads) stand for it
        given = [getattr(e, n) for n in (a.expansion.option, *a.expansion.aliases) if getattr(e, n) is not None]
        if given or a.expansion.option not in sizes:
            sizes[a.expansion.option] = given[0] if given else None
    return ExpansionPlan.for_model(config, every=e.every, layers=e.layers, init=e.init, seed=e.seed,
                                   gate_bias_init=e.gate_bias_init, **sizes)


def weight_source(run_cfg) -> WeightSource:
    """``model.source``: a checkpoint path, or ``scratch`` with ``model.config`` (a model config dict)."""
    m, hf = run_cfg.model, None
    if m.source == "scratch":
        if not m.config:
            raise ValueError("model.source=scratch needs model.config (arch, sizes)")
        config = config_from_dict(m.config)
        options = {"gate_bias": tuple(m.gate_bias_init)} if m.gate_bias_init else {}
        base, desc = config, f"fresh {config.arch} (seed {run_cfg.seed})"
        fetch = fresh_weights(config, run_cfg.seed, **options)
    else:
        src = open_source(m.source)
        base, desc, fetch = src.config, str(m.source), src.get
        fmt, hf_config = hf_origin(src)
        hf = {"format": fmt.name, "config": hf_config} if hf_config else None
    plan = expansion_plan(run_cfg, base)
    if plan is None:
        return WeightSource(base, fetch, desc, base, hf=hf)
    new = expand_config(base, plan)
    return WeightSource(new, lambda n: expand_tensor(n, fetch(n), base, new, plan),
                        f"{desc}, StateX {plan.init} of layers {list(plan.layers)}", base, plan, hf)


def fill(model: nn.Module, source: WeightSource, tp_rank: int, tp: int) -> None:
    """Copy this rank's slice of every parameter it holds from the source, one full tensor at a time."""
    copy_shards(named_internal_parameters(model), source.get, specs_for(source.config, tp), tp_rank, tp)
