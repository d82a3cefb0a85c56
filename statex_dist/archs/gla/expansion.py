"""StateX on GLA: merge a layer's heads (H -> H', H' dividing H). What a plan may ask, and the per-tensor
transforms of one layer.

Modes: ``reinit`` (the paper's default) redraws the layer's attention weights as fla's layer initialises them
and resets its norms; ``merge`` keeps every projection, gate and conv and tiles the output norm's weight over
the merged heads.

Shapes: D hidden, K key dim, V value dim, r gate low rank, W short-conv width. Only the output norm
weight changes shape ([V / H] -> [V / H']); every projection keeps its shape.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

from statex_dist.archs.gla.config import GLAConfig
from statex_dist.archs.record import Expansion
from statex_dist.statex.tensors import check_shape, default_bound, generator, uniform, xavier_bound

if TYPE_CHECKING:
    from statex_dist.statex.plan import ExpansionPlan

# fla's GatedLinearAttention._initialize_weights: Xavier-uniform with this gain on every nn.Linear
XAVIER_GAIN = 2 ** -2.5
PROJECTIONS = {f"attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "g_proj", "o_proj",
                                             "gk_proj.0", "gk_proj.1")}
CONVS = {f"attn.{p}_conv1d.weight" for p in ("q", "k", "v")}
UNTOUCHED_PREFIXES = ("mlp.", "mlp_norm.")


def plan_options(config: GLAConfig, layers: list[int], heads: Optional[int],
                 gate_bias_init: Optional[tuple[float, float]]) -> dict:
    """The plan's GLA fields: ``heads`` heads per expanded layer (default 1: merge them all)."""
    return {"heads": heads or 1, "gate_bias_init": tuple(gate_bias_init) if gate_bias_init else None}


def _divisors_below(h: int) -> list[int]:
    return [d for d in range(1, h) if h % d == 0]


def validate(config: GLAConfig, plan: ExpansionPlan) -> None:
    """Raise ValueError when ``plan`` does not apply to ``config``; every message names the constraint."""
    if plan.d_state is not None:
        raise ValueError("d_state applies to Mamba2 models; a GLA expansion sets heads")
    if plan.gate_bias_init is not None and plan.init != "reinit":
        raise ValueError("gate_bias_init applies to init='reinit' only (merge keeps the gate bias)")
    for i in plan.layers:
        h = config.num_heads[i]
        if plan.heads < 1 or plan.heads >= h or h % plan.heads:
            valid = _divisors_below(h)
            raise ValueError(
                f"layer {i} has {h} heads: heads={plan.heads} must divide {h} and be smaller; "
                + (f"valid values: {valid}" if valid else "this layer has one head and cannot merge further"))


def expand_gla_layer(name: str, local: str, tensor: torch.Tensor, layer: int, old: GLAConfig,
                     new: GLAConfig, plan: ExpansionPlan) -> torch.Tensor:
    """The new tensor for parameter ``local`` (the name after ``layers.{layer}.``) of an expanded layer."""
    if local.startswith(UNTOUCHED_PREFIXES):
        return tensor
    h_old, h_new = old.num_heads[layer], new.num_heads[layer]
    if local == "attn.g_norm.weight":
        check_shape(name, tensor, (old.value_dim // h_old,))
        if plan.init == "merge":  # one head's norm weight, shared by the H / H' heads now merged
            return tensor.repeat(h_old // h_new)
        return torch.ones(old.value_dim // h_new, dtype=tensor.dtype, device=tensor.device)
    if plan.init == "merge":  # projections, gate and convs are reused as they are
        if local.startswith("attn.") or local == "attn_norm.weight":
            return tensor
        raise ValueError(f"{name}: no StateX rule for this GLA parameter")
    if local == "attn_norm.weight":
        return torch.ones_like(tensor)
    gen = generator(plan.seed, name)
    if local in PROJECTIONS:
        b = xavier_bound(tensor.shape, XAVIER_GAIN)
        return uniform(tensor.shape, -b, b, gen, tensor)
    if local == "attn.gk_proj.1.bias":
        if plan.gate_bias_init is None:
            return torch.zeros_like(tensor)
        return uniform(tensor.shape, *plan.gate_bias_init, gen, tensor)
    if local in CONVS:  # [C, 1, W]: nn.Conv1d's default, fan_in = W
        b = default_bound(tensor.shape[1] * tensor.shape[2])
        return uniform(tensor.shape, -b, b, gen, tensor)
    raise ValueError(f"{name}: no StateX rule for this GLA parameter")


EXPANSION = Expansion(
    modes=("reinit", "merge"), option="heads", per_layer="num_heads", aliases=("gla_heads",),
    option_help="heads of each expanded layer (default 1)",
    plan_options=plan_options, validate=validate, expand_layer=expand_gla_layer)
