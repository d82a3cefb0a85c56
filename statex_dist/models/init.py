"""Fresh weights for a model trained from scratch, one tensor at a time and keyed by name.

Each tensor comes from a generator seeded by (seed, name), so every TP x PP layout draws the same model
and a rank draws only the tensors it holds. The schemes follow the libraries: fla's GLA (Xavier-uniform
with gain 2^-2.5 on the attention projections, normal(0.02) elsewhere, ones for norms, optional gate
bias U(lo, hi) for a long initial memory) and mamba_ssm's Mamba2 (nn.Linear / nn.Conv1d defaults,
dt log-uniform in [1e-3, 1e-1] stored as its inverse softplus, A = 1..H).
"""
from __future__ import annotations

import math
import re
from typing import Optional

import torch

from statex_dist.config import ModelConfig
from statex_dist.statex.tensors import default_bound, generator, uniform, xavier_bound

_GLA_ATTN = re.compile(r"layers\.\d+\.attn\.(q_proj|k_proj|v_proj|g_proj|o_proj|gk_proj\.[01])\.weight")


def init_tensor(name: str, shape: tuple[int, ...], config: ModelConfig, seed: int = 0,
                gate_bias: Optional[tuple[float, float]] = None, dt_range: tuple[float, float] = (1e-3, 0.1),
                a_range: Optional[tuple[float, float]] = None) -> torch.Tensor:
    """The initial fp32 value of parameter ``name`` (internal name) with full shape ``shape``.

    Mamba2 only: ``dt_range`` is mamba_ssm's (dt_min, dt_max); ``a_range`` its ``A_init_range`` (-A drawn from
    U(lo, hi)), default transformers' A = 1..H.
    """
    gen = generator(seed, name)
    like = torch.empty(0)
    if name.endswith(("norm.weight", "norm_f.weight")) or name.endswith((".D",)):
        return torch.ones(shape)
    if config.arch == "gla":
        if _GLA_ATTN.fullmatch(name):
            b = xavier_bound(shape, 2 ** -2.5)
            return uniform(shape, -b, b, gen, like)
        if name.endswith("gk_proj.1.bias"):
            return uniform(shape, *gate_bias, gen, like) if gate_bias else torch.zeros(shape)
        if name.endswith("conv1d.weight"):
            b = default_bound(shape[1] * shape[2])
            return uniform(shape, -b, b, gen, like)
        return torch.randn(shape, generator=gen) * 0.02
    # Mamba2
    if name.endswith("mixer.A_log"):
        if a_range:
            return torch.log(uniform(shape, *a_range, gen, like))
        return torch.log(torch.arange(1, shape[0] + 1, dtype=torch.float32))
    if name.endswith("mixer.dt_bias"):
        lo, hi = (math.log(x) for x in dt_range)
        dt = torch.exp(torch.rand(shape, generator=gen) * (hi - lo) + lo)
        dt = dt.clamp(min=1e-4)
        return dt + torch.log(-torch.expm1(-dt))
    if name.endswith("conv1d.weight") or name.endswith("conv1d.bias"):
        b = default_bound(config.d_conv)
        return uniform(shape, -b, b, gen, like)
    if name.endswith(("in_proj.weight", "out_proj.weight")):
        b = default_bound(shape[1])
        return uniform(shape, -b, b, gen, like)
    return torch.randn(shape, generator=gen) * 0.02
