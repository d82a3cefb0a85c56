"""Pieces the models share: RMS norms, the SwiGLU MLP, fla's short convolution and fla's pre-norm block (the
tensor-parallel layers they are built from live in statex_dist.parallel.megatron_layers)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from statex_dist.models.layout import fla_block_specs
from statex_dist.models.recurrent_state import MixerState
from statex_dist.ops import causal_conv1d
from statex_dist.parallel import context
from statex_dist.parallel.factory import linear
from statex_dist.parallel.layers import local_parameter
from statex_dist.parallel.mappings import all_reduce_sum, tp_reduced_grad
from statex_dist.parallel.megatron_layers import to_column_input
from statex_dist.parallel.sequence import mark_sequence_parallel
from statex_dist.parallel.sharding import ShardSpec


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in fp32, returned in x's dtype. x [..., D], weight [D]."""
    y = F.rms_norm(x.float(), (x.shape[-1],), None, eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


def maybe_reduced(w: torch.Tensor) -> torch.Tensor:
    """``w`` whose gradient is summed over TP where its spec says each rank computes only a part of it."""
    return tp_reduced_grad(w) if w.shard_spec.grad_reduce else w


def head_rms_norm(o: torch.Tensor, weight: torch.Tensor, eps: float, width: Optional[int] = None) -> torch.Tensor:
    """RMSNorm over each head's value channels, in fp32, returned in fp32. o [..., dv], weight [dv].

    ``width``: a head's full value width, when this rank holds only a slice of every head's channels
    (value-sharded TP): the sum of squares is then all-reduced over TP and divided by ``width``.
    """
    if width is None:
        return F.rms_norm(o.float(), (o.shape[-1],), None, eps) * weight.float()
    of = o.float()
    ss = all_reduce_sum(of.pow(2).sum(-1, keepdim=True))
    return of * torch.rsqrt(ss / width + eps) * weight.float()


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

    def __init__(self, specs: dict[str, ShardSpec], mp_cfg, sequence_parallel: bool = False):
        """``specs``: the layout's ``gate_proj.weight``, ``up_proj.weight`` and ``down_proj.weight``."""
        super().__init__()
        self.sequence_parallel = sequence_parallel
        self.gate_proj = linear(specs["gate_proj.weight"], mp_cfg, shared_input=True)
        self.up_proj = linear(specs["up_proj.weight"], mp_cfg, shared_input=True)
        self.down_proj = linear(specs["down_proj.weight"], mp_cfg, sequence_parallel=sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = to_column_input(x, self.sequence_parallel)
        return self.down_proj(F.silu(self.gate_proj(x)[0]) * self.up_proj(x)[0])[0]


class ShortConvolution(nn.Module):
    """fla's ShortConvolution: depthwise causal conv of width W, then SiLU. Weight [C, 1, W] as in fla.

    Its channels split over TP like the projection that feeds it. x [B, T, C_local] -> [B, T, C_local].
    """

    def __init__(self, spec: ShardSpec, tp: int, dtype):
        super().__init__()
        self.weight = local_parameter(spec, tp, dtype)

    def forward(self, x: torch.Tensor, initial_state: Optional[torch.Tensor] = None,
                output_final_state: bool = False):
        """``initial_state``: the W-1 inputs before x [B, C_local, W-1] (zeros when None); with
        ``output_final_state`` also returns the last W-1 inputs [B, C_local, W-1], the next call's."""
        return causal_conv1d(x, maybe_reduced(self.weight)[:, 0, :], None, activation="silu",
                             initial_state=initial_state, return_final_state=output_final_state)


def short_convs(mixer: nn.Module, names, tensors, initial_state: Optional[MixerState], output_final_state: bool):
    """``tensors`` through the mixer's short convolutions ``{name}_conv1d``, each continuing from its tail in
    ``initial_state`` (under context parallelism: from the previous CP rank's segment); returns (outputs,
    {name: final tail} when ``output_final_state``, else None)."""
    if context.size() > 1:
        initial_state = MixerState(None, context.previous_tails(dict(zip(names, tensors)), mixer.config.conv_size))
    tails = initial_state.conv if initial_state is not None else {}
    outs, finals = [], {}
    for name, t in zip(names, tensors):
        conv = getattr(mixer, f"{name}_conv1d")
        if output_final_state:
            t, finals[name] = conv(t, tails.get(name), True)
        else:
            t = conv(t, tails.get(name))
        outs.append(t)
    return outs, (finals if output_final_state else None)


class FlaBlock(nn.Module):
    """fla's pre-norm residual block: x + attn(attn_norm(x)), then + mlp(mlp_norm(x)). x [B, T, D] -> [B, T, D]
    ([B, T / TP, D] with ``sequence_parallel``: norms and residual adds on this rank's tokens only).

    Subclasses set ``MIXER``, the token mixer, built as ``MIXER(config, layer, megatron config,
    sequence_parallel=)``; the norms and the SwiGLU MLP follow ``models.layout.fla_block_specs``.
    """
    MIXER: type = nn.Module

    def __init__(self, config, layer: int, mp_cfg, sequence_parallel: bool = False):
        super().__init__()
        self.layer = layer
        sp = sequence_parallel
        specs = fla_block_specs(config, layer, {})
        self.attn_norm = RMSNorm(specs["attn_norm.weight"], config.norm_eps, mp_cfg.params_dtype, sequence_parallel=sp)
        self.attn = self.MIXER(config, layer, mp_cfg, sequence_parallel=sp)
        self.mlp_norm = RMSNorm(specs["mlp_norm.weight"], config.norm_eps, mp_cfg.params_dtype, sequence_parallel=sp)
        self.mlp = SwiGLUMLP({k[4:]: v for k, v in specs.items() if k.startswith("mlp.")}, mp_cfg, sequence_parallel=sp)

    def forward(self, x: torch.Tensor, initial_state: Optional[MixerState] = None, output_final_state: bool = False):
        """With ``output_final_state`` returns (x, the mixer's final MixerState); ``initial_state``: the mixer's
        state after the tokens before x (see statex_dist.models.recurrent_state)."""
        o = self.attn(self.attn_norm(x), initial_state, output_final_state)
        o, final = o if output_final_state else (o, None)
        x = x + o
        x = x + self.mlp(self.mlp_norm(x))
        return (x, final) if output_final_state else x
