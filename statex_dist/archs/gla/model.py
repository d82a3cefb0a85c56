"""Gated linear attention LM: fla's GLAForCausalLM architecture, with heads chosen per layer.

Parameter names equal fla's without the ``model.`` prefix (``layers.3.attn.q_proj.weight``), so the
checkpoint readers map them one to one. Shapes: B batch, T time, D hidden, H heads of one layer,
K = D * expand_k (key dim, all heads), V = D * expand_v (value dim, all heads).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from statex_dist.archs.gla import layout
from statex_dist.archs.gla.config import GLAConfig
from statex_dist.archs.gla.layout import attn_specs, tp_mode
from statex_dist.models.causal_lm import CausalLM
from statex_dist.models.common import FlaBlock, ShortConvolution, head_rms_norm, maybe_reduced, short_convs
from statex_dist.models.recurrent_state import MixerState
from statex_dist.ops import gla_attention
from statex_dist.parallel import context, state
from statex_dist.parallel.factory import linear
from statex_dist.parallel.layers import local_parameter
from statex_dist.parallel.megatron_layers import to_column_input
from statex_dist.parallel.sequence import gather_seq


class GatedLinearAttention(nn.Module):
    """One GLA token mixer (fla's ``GatedLinearAttention``) of ``num_heads[layer]`` heads.

    TP by heads (see :func:`tp_mode`): q/k/v/g/gk are megatron-core column-parallel, o row-parallel, the
    low-rank gate projection and the per-head norm weight replicated. TP by values: q, k and the gate
    are computed whole on every rank (gradients summed over TP), v/g column-parallel by value channels,
    o row-parallel, and the output RMSNorm spans ranks through an all-reduced sum of squares.
    x [B, T, D] -> [B, T, D]. With ``sequence_parallel`` x and the output are this rank's time slice
    [B, T / TP, D]: x is all-gathered in front of the projections, o_proj's output reduce-scattered.

    Precision under bf16 training. DeepSpeed stores every parameter in bf16 (the fp32 master copy is the
    optimizer's), as a bf16 fla model is stored. What the forward computes each one in
    (``statex_dist.training.precision`` records it):

    | parameter | computed in | where |
    |---|---|---|
    | ``q/k/v/g/o_proj.weight``, ``gk_proj.0.weight``, ``gk_proj.1.weight`` | bf16 | matmuls on bf16 activations |
    | ``gk_proj.1.bias`` | bf16 | added inside the gate's linear layer; logsigmoid on the bf16 logits |
    | ``q/k/v_conv1d.weight`` | fp32 | the short convolution sums its taps in fp32 |
    | ``g_norm.weight`` | fp32 | the per-head RMSNorm in fp32 (all-reduced sum of squares included) |

    This is fla's GLA layer: its gate is ``nn.Linear(gate_low_rank_dim, key_dim, bias=True)`` in the model's
    dtype followed by ``F.logsigmoid`` on its output, and its norms (``RMSNorm``, ``FusedRMSNormGated``) load
    the weight as fp32 inside the kernel. The gate's bias follows fla rather than an fp32 add, so that the
    decays trained here are the ones fla computes from the exported weights; the scan then accumulates the
    gates in fp32 (fla's ``chunk_local_cumsum`` as well).
    """

    def __init__(self, config: GLAConfig, layer: int, mp_cfg, sequence_parallel: bool = False):
        super().__init__()
        tp = state.tp_size()
        H = config.num_heads[layer]
        self.config, self.layer, self.mode = config, layer, tp_mode(H, tp)
        self.sequence_parallel = sp = sequence_parallel
        specs = attn_specs(config, layer, tp)   # every shape and split below is the layout's
        dtype = mp_cfg.params_dtype
        self.head_k = config.key_dim // H
        self.head_v = specs["g_norm.weight"].local_shape(tp)[0]   # this rank's value channels of a head
        self.heads = specs["v_proj.weight"].local_shape(tp)[0] // self.head_v
        self.value_width = specs["g_norm.weight"].shape[0]         # one head's full value width: the norm's denominator
        # q, k, v, g read one input that passed copy-to-region once (one all-reduce of its gradient); the
        # layout picks each layer (column- or row-parallel by heads, packed by value channels, or replicated)
        self.q_proj = linear(specs["q_proj.weight"], mp_cfg, shared_input=True)
        self.k_proj = linear(specs["k_proj.weight"], mp_cfg, shared_input=True)
        self.v_proj = linear(specs["v_proj.weight"], mp_cfg, shared_input=True)
        if config.use_output_gate:
            self.g_proj = linear(specs["g_proj.weight"], mp_cfg, shared_input=True)
        self.o_proj = linear(specs["o_proj.weight"], mp_cfg, sequence_parallel=sp)
        if config.use_short_conv:
            for name in ("q", "k", "v"):
                setattr(self, f"{name}_conv1d", ShortConvolution(specs[f"{name}_conv1d.weight"], tp, dtype))
        # gk_proj.0 reads x, not the gathered copy: gk_proj.1 returns its input gradient already summed over
        # TP, so with SP the gather after gk_proj.0 only slices it back to this rank's tokens, and gk_proj.0's
        # weight gradient (from this rank's tokens) is summed over TP
        self.gk_proj = nn.ModuleList([linear(specs["gk_proj.0.weight"], mp_cfg, sequence_parallel=sp),
                                      linear(specs["gk_proj.1.weight"], mp_cfg, bias_spec=specs["gk_proj.1.bias"])])
        self.g_norm = nn.Module()
        self.g_norm.weight = local_parameter(specs["g_norm.weight"], tp, dtype)

    @staticmethod
    def _out(y):
        return y[0] if isinstance(y, tuple) else y

    def forward(self, x: torch.Tensor, initial_state: Optional[MixerState] = None,
                output_final_state: bool = False):
        """Returns o [B, T, D], and with ``output_final_state`` the MixerState after x (the scan's state
        [B, heads, d_k, d_v local] fp32, the q/k/v conv tails); ``initial_state``: the one before x (zeros
        when None). [B, T / TP, D] in and out with sequence parallelism."""
        xs = to_column_input(x, self.sequence_parallel)
        B, T, _ = xs.shape
        h, dk, dv = self.heads, self.head_k, self.head_v
        q, k, v = (self._out(p(xs)) for p in (self.q_proj, self.k_proj, self.v_proj))
        tails, cp = None, context.size() > 1
        if cp:
            context.check_no_state(initial_state, output_final_state)
        if self.config.use_short_conv:
            (q, k, v), tails = short_convs(self, "qkv", (q, k, v), initial_state, output_final_state)
        low = self.gk_proj[0](x)
        if self.sequence_parallel:
            low = gather_seq(low, grad_complete=True)
        gk = self._out(self.gk_proj[1](low))
        q, k, gk = (t.reshape(B, T, h, dk) for t in (q, k, gk))
        v = v.reshape(B, T, h, dv)
        gk = F.logsigmoid(gk) / self.config.gate_logit_normalizer
        if self.config.clamp_min is not None:
            gk = gk.clamp_min(self.config.clamp_min)
        if cp:   # the state entering this rank's segment from the CP ranks before (parallel/context.py)
            o, final_state = context.segment_scan(
                lambda h0, final: gla_attention(q, k, v, gk, scale=dk ** -0.5, initial_state=h0,
                                                output_final_state=final),
                lambda: gk.float().sum(1)[..., None], (B, h, dk, v.shape[-1]), (B, h, dk, 1), q.device), None
        else:
            o, final_state = gla_attention(q, k, v, gk, scale=dk ** -0.5,
                                           initial_state=None if initial_state is None else initial_state.recurrent,
                                           output_final_state=output_final_state)
        o = self._norm(o)
        o = o.reshape(B, T, h * dv)
        if self.config.use_output_gate:
            o = o * F.silu(self._out(self.g_proj(xs)))
        out = self._out(self.o_proj(o))
        return (out, MixerState(final_state, tails or {})) if output_final_state else out

    def _norm(self, o: torch.Tensor) -> torch.Tensor:
        """RMSNorm over each head's value channels; o [B, T, h, dv_local]."""
        width = None if self.mode == "heads" else self.value_width
        return head_rms_norm(o, maybe_reduced(self.g_norm.weight), self.config.norm_eps, width).to(o.dtype)


class GLABlock(FlaBlock):
    """fla's GLABlock: x + attn(attn_norm(x)), then + mlp(mlp_norm(x)) (see FlaBlock).

    Under bf16: ``attn_norm.weight`` and ``mlp_norm.weight`` computed in fp32 (the RMSNorms run in fp32), the
    MLP's weights in bf16, the residual stream bf16 (fla's blocks do the same)."""
    MIXER = GatedLinearAttention


class GLAForCausalLM(CausalLM):
    """fla's GLAForCausalLM: GLA blocks between ``embeddings`` and ``norm`` (see CausalLM)."""
    EMBEDDING, NORM, BLOCK = layout.EMBEDDING, layout.NORM, GLABlock
