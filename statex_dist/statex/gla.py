"""Per-tensor StateX transforms of one GLA layer (heads H -> H', H' dividing H).

Shapes: D hidden, K key dim, V value dim, r gate low rank, W short-conv width. Only the output norm
weight changes shape ([V / H] -> [V / H']); every projection keeps its shape.
"""
from __future__ import annotations

import torch

from statex_dist.models.config import GLAConfig
from statex_dist.statex.plan import ExpansionPlan
from statex_dist.statex.tensors import check_shape, default_bound, generator, uniform, xavier_bound

# fla's GatedLinearAttention._initialize_weights: Xavier-uniform with this gain on every nn.Linear
XAVIER_GAIN = 2 ** -2.5
PROJECTIONS = {f"attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "g_proj", "o_proj",
                                             "gk_proj.0", "gk_proj.1")}
CONVS = {f"attn.{p}_conv1d.weight" for p in ("q", "k", "v")}
UNTOUCHED_PREFIXES = ("mlp.", "mlp_norm.")


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
