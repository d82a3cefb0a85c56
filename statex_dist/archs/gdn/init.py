"""Fresh Gated DeltaNet weights, as fla 0.6's ``GatedDeltaNetPreTrainedModel._init_weights`` for
``GatedDeltaNetForCausalLM`` (statex_dist.models.init draws them, one full tensor at a time):

every Linear and Conv1d weight (q/k/v/a/b/g/o, the short convs, the MLP, an untied LM head) and the
embedding ~ N(0, 0.02); norm weights (the blocks', the final and ``o_norm``) 1; per value head
A_log = log(A), A ~ U(0, 16), and dt_bias = dt + log(-expm1(-dt)) (the inverse of softplus) with
dt = exp(U(log 1e-3, log 0.1)) floored at 1e-4.
"""
from __future__ import annotations

import math

import torch

from statex_dist.archs.gdn.config import GDNConfig
from statex_dist.statex.tensors import generator, uniform

A_RANGE = (0.0, 16.0)     # fla's GatedDeltaNet: A ~ U(0, 16)
DT_RANGE = (1e-3, 0.1)    # fla's (dt_min, dt_max)
OPTIONS = ("a_range", "dt_range")


def init_tensor(name: str, shape: tuple[int, ...], config: GDNConfig, seed: int = 0,
                a_range: tuple[float, float] = A_RANGE, dt_range: tuple[float, float] = DT_RANGE) -> torch.Tensor:
    """The initial fp32 value of parameter ``name`` (internal name) with full shape ``shape``; ``a_range``
    and ``dt_range`` replace fla's ranges of A and dt."""
    gen = generator(seed, name)
    if name.endswith("norm.weight"):
        return torch.ones(shape)
    if name.endswith("attn.A_log"):
        return torch.log(uniform(shape, *a_range, gen, torch.empty(0)))
    if name.endswith("attn.dt_bias"):
        lo, hi = (math.log(x) for x in dt_range)
        dt = torch.exp(torch.rand(shape, generator=gen) * (hi - lo) + lo).clamp(min=1e-4)
        return dt + torch.log(-torch.expm1(-dt))
    return torch.randn(shape, generator=gen) * 0.02
