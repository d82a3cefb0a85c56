"""Pieces both models share: RMS norms and the SwiGLU MLP (the tensor-parallel layers they are built from
live in statex_dist.parallel.megatron_layers)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from statex_dist.parallel.layers import local_parameter
from statex_dist.parallel.mappings import tp_reduced_grad
from statex_dist.parallel.megatron_layers import column, row, to_column_input
from statex_dist.parallel.sequence import mark_sequence_parallel
from statex_dist.parallel.sharding import ShardSpec


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in fp32, returned in x's dtype. x [..., D], weight [D]."""
    y = F.rms_norm(x.float(), (x.shape[-1],), None, eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


class RMSNorm(nn.Module):
    """Replicated RMSNorm (a block's pre-norm or the final norm). x [..., D] -> [..., D].

    Computed in fp32 whatever the dtype of x and of the weight (a bf16 weight enters upcast, as in fla's and
    mamba_ssm's norm kernels, which load it as fp32), and returned in x's dtype.

    ``sequence_parallel``: x is this rank's time slice [B, T / TP, D], so the weight's gradient is summed
    over TP (inside autograd: ZeRO's hooks see the full gradient).
    """

    def __init__(self, spec: ShardSpec, eps: float, dtype=torch.float32, sequence_parallel: bool = False):
        super().__init__()
        self.eps = eps
        self.sequence_parallel = sequence_parallel
        self.weight = local_parameter(spec, 1, dtype, 1.0)   # replicated
        if sequence_parallel:
            mark_sequence_parallel(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, tp_reduced_grad(self.weight) if self.sequence_parallel else self.weight, self.eps)


class SwiGLUMLP(nn.Module):
    """fla's GatedMLP: down(silu(gate(x)) * up(x)); gate/up column-parallel, down row-parallel.

    Shapes: x [B, T, hidden] -> [B, T, hidden]; with ``sequence_parallel`` [B, T / TP, hidden] in and out.
    """

    def __init__(self, specs: dict[str, ShardSpec], cfg, sequence_parallel: bool = False):
        """``specs``: the layout's ``gate_proj.weight``, ``up_proj.weight`` and ``down_proj.weight``."""
        super().__init__()
        self.sequence_parallel = sequence_parallel
        self.gate_proj = column(specs["gate_proj.weight"], cfg, shared_input=True)
        self.up_proj = column(specs["up_proj.weight"], cfg, shared_input=True)
        self.down_proj = row(specs["down_proj.weight"], cfg, sequence_parallel=sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_column_input(x, self.sequence_parallel)
        return self.down_proj(F.silu(self.gate_proj(x)[0]) * self.up_proj(x)[0])[0]
