"""Fresh GLA weights, as fla 0.6's ``FLAPreTrainedModel._init_weights`` for ``GLAForCausalLM``
(statex_dist.models.init draws them, one full tensor at a time):

every Linear and Conv1d weight (q/k/v/g/o, the low-rank gate gk_proj.0/1, the MLP, the short convs, an
untied LM head) and the embedding ~ N(0, 0.02); biases (gk_proj.1.bias) 0; norm weights 1.
``gate_bias=(lo, hi)`` instead draws gk_proj.1.bias ~ U(lo, hi) (a long initial memory).
"""
from __future__ import annotations

from typing import Optional

import torch

from statex_dist.archs.gla.config import GLAConfig
from statex_dist.statex.tensors import generator, uniform

OPTIONS = ("gate_bias",)


def init_tensor(name: str, shape: tuple[int, ...], config: GLAConfig, seed: int = 0,
                gate_bias: Optional[tuple[float, float]] = None) -> torch.Tensor:
    """The initial fp32 value of parameter ``name`` (internal name) with full shape ``shape``."""
    gen = generator(seed, name)
    if name.endswith(("norm.weight", "norm_f.weight")):
        return torch.ones(shape)
    if name.endswith(".bias"):
        return uniform(shape, *gate_bias, gen, torch.empty(0)) if gate_bias and name.endswith("gk_proj.1.bias") \
            else torch.zeros(shape)
    return torch.randn(shape, generator=gen) * 0.02
