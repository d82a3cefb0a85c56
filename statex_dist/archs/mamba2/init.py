"""Fresh Mamba2 weights, as mamba_ssm 2.3's ``Mamba2`` inside ``MambaLMHeadModel`` (no MLP)
(statex_dist.models.init draws them, one full tensor at a time):

in_proj W ~ U(-1/sqrt(D), 1/sqrt(D)) (nn.Linear's default); conv1d weight and bias ~ U(-1/sqrt(W), 1/sqrt(W))
(nn.Conv1d's default, fan-in = kernel width W); out_proj W ~ U(-1/sqrt(E), 1/sqrt(E)) / sqrt(num_layers)
(mamba_ssm's rescale_prenorm_residual, one residual per layer); dt ~ exp(U(log dt_min, log dt_max)),
floored at 1e-4, stored as dt_bias = dt + log(-expm1(-dt)) (the inverse of softplus); A_log = log(A),
A ~ U(1, 16) (``A_init_range``); D 1; norm weights 1; embedding ~ N(0, 0.02); an untied LM head
~ U(-1/sqrt(D), 1/sqrt(D)).
"""
from __future__ import annotations

import math
import re
from typing import Optional

import torch

from statex_dist.archs.mamba2.config import Mamba2Config
from statex_dist.archs.mamba2.layout import EMBEDDING
from statex_dist.statex.tensors import default_bound, generator, uniform

A_INIT_RANGE = (1.0, 16.0)   # mamba_ssm's Mamba2 default
DT_RANGE = (1e-3, 0.1)       # mamba_ssm's (dt_min, dt_max)
OPTIONS = ("dt_range", "a_range")

_MAMBA_UNIFORM = re.compile(r"layers\.\d+\.mixer\.(in_proj\.weight|out_proj\.weight|conv1d\.weight|conv1d\.bias)")


def init_tensor(name: str, shape: tuple[int, ...], config: Mamba2Config, seed: int = 0,
                dt_range: tuple[float, float] = DT_RANGE,
                a_range: Optional[tuple[float, float]] = A_INIT_RANGE) -> torch.Tensor:
    """The initial fp32 value of parameter ``name`` (internal name) with full shape ``shape``.

    ``dt_range`` is mamba_ssm's (dt_min, dt_max); ``a_range`` its ``A_init_range`` (A drawn from U(lo, hi));
    ``a_range=None`` gives transformers' Mamba2 init instead, A = 1..H.
    """
    gen = generator(seed, name)
    like = torch.empty(0)
    if name.endswith(("norm.weight", "norm_f.weight", ".D")):
        return torch.ones(shape)
    if name == f"{EMBEDDING}.weight":
        return torch.randn(shape, generator=gen) * 0.02
    if name.endswith("mixer.A_log"):
        if a_range is None:
            return torch.log(torch.arange(1, shape[0] + 1, dtype=torch.float32))
        return torch.log(uniform(shape, *a_range, gen, like))
    if name.endswith("mixer.dt_bias"):
        lo, hi = (math.log(x) for x in dt_range)
        dt = torch.exp(torch.rand(shape, generator=gen) * (hi - lo) + lo).clamp(min=1e-4)
        return dt + torch.log(-torch.expm1(-dt))
    if _MAMBA_UNIFORM.fullmatch(name) or name == "lm_head.weight":
        fan_in = config.d_conv if ".conv1d." in name else shape[1]
        b = default_bound(fan_in)
        if name.endswith("out_proj.weight"):
            b /= math.sqrt(config.num_layers)
        return uniform(shape, -b, b, gen, like)
    raise KeyError(f"{name}: no initialisation for this Mamba2 parameter")
