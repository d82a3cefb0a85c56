"""Gated DeltaNet LM: fla's GatedDeltaNetForCausalLM architecture, with heads chosen per layer.

Parameter names equal fla's without the ``model.`` prefix (``layers.3.attn.q_proj.weight``), so the
checkpoint readers map them one to one. Shapes: B batch, T time, D hidden, H key heads and Hv value heads
of one layer, K key dim and V value dim (all heads), dk = K / H, dv = V / Hv.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from statex_dist.archs.gdn import layout
from statex_dist.archs.gdn.config import GDNConfig
from statex_dist.archs.gdn.layout import attn_specs, tp_mode
from statex_dist.models.causal_lm import CausalLM
from statex_dist.models.common import FlaBlock, ShortConvolution, head_rms_norm, maybe_reduced, short_convs
from statex_dist.models.recurrent_state import MixerState
from statex_dist.ops import gated_delta_rule
from statex_dist.parallel import context, state
from statex_dist.parallel.factory import linear
from statex_dist.parallel.layers import local_parameter
from statex_dist.parallel.megatron_layers import to_column_input

L2_EPS = 1e-6   # fla's l2norm: x / sqrt(sum(x^2) + eps), in fp32


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """fla's l2norm over the last dim (each head's key channels), computed in fp32, returned in x's dtype."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + L2_EPS)).to(x.dtype)


class GatedDeltaNet(nn.Module):
    """One Gated DeltaNet token mixer (fla's ``GatedDeltaNet``) of ``num_heads[layer]`` key heads and
    ``num_v_heads[layer]`` value heads.

    q, k = l2norm(silu(conv(q_proj x))), ..., v = silu(conv(v_proj x)); per value head the log decay
    g = -exp(A_log) * softplus(a_proj x + dt_bias) and the write strength beta = sigmoid(b_proj x); the
    gated delta rule (``statex_dist.ops.gated_delta_rule``: fla's chunk kernel on CUDA with its in-kernel
    norm, sigmoid and gate off, so those are computed here, their gradients from autograd); o_norm, a gated
    RMSNorm over each value head's channels (norm(o) * w * silu(g_proj x), a plain RMSNorm without
    ``use_gate``); o_proj. Grouped value attention: key head j's q and k are repeated
    for the value heads it serves before the scan.

    TP by heads (see :func:`tp_mode`): q/k/v/a/b/g are megatron-core column-parallel (a rank's key heads
    and the value heads they serve; A_log, dt_bias and the convs with them), o row-parallel, o_norm's
    weight replicated. TP by values: q, k, a, b, A_log, dt_bias and the q/k convs are whole on every rank
    (gradients summed over TP), v/g and the v conv split by each value head's channels, o row-parallel, and
    o_norm spans ranks through an all-reduced sum of squares. x [B, T, D] -> [B, T, D]. With
    ``sequence_parallel`` x and the output are this rank's time slice [B, T / TP, D]: x is all-gathered in
    front of the projections, o_proj's output reduce-scattered.

    Precision under bf16 training. DeepSpeed stores every parameter in bf16 (the fp32 master copy is the
    optimizer's), as a bf16 fla model is stored. What the forward computes each one in
    (``statex_dist.training.precision`` records it):

    | parameter | computed in | where |
    |---|---|---|
    | ``q/k/v/a/b/g/o_proj.weight`` | bf16 | matmuls on bf16 activations |
    | ``A_log``, ``dt_bias`` | fp32 | g = -exp(A_log) * softplus(a + dt_bias) in fp32 |
    | ``q/k/v_conv1d.weight`` | fp32 | the short convolution sums its taps in fp32 |
    | ``o_norm.weight`` | fp32 | the gated RMSNorm in fp32 (all-reduced sum of squares included) |

    These are fla's: its kernel computes the decay from the raw a_proj output with A_log and dt_bias
    loaded as fp32 (``use_gate_in_kernel``), the write strength's sigmoid and the q/k L2 norms in fp32,
    and its gated norm loads the weight as fp32.
    """

    def __init__(self, config: GDNConfig, layer: int, mp_cfg, sequence_parallel: bool = False):
        super().__init__()
        tp = state.tp_size()
        H, Hv = config.num_heads[layer], config.num_v_heads[layer]
        self.config, self.layer, self.mode = config, layer, tp_mode(H, tp)
        self.sequence_parallel = sp = sequence_parallel
        specs = attn_specs(config, layer, tp)   # every shape and split below is the layout's
        dtype = mp_cfg.params_dtype
        self.head_k = config.head_k_dim(layer)
        self.head_v = specs["o_norm.weight"].local_shape(tp)[0]   # this rank's value channels of a value head
        self.value_width = config.head_v_dim(layer)   # one value head's full width: the norm's denominator
        self.heads = specs["q_proj.weight"].local_shape(tp)[0] // self.head_k
        self.v_heads = specs["a_proj.weight"].local_shape(tp)[0]
        # q, k, v, a, b, g read one input that passed copy-to-region once (one all-reduce of its gradient); the
        # layout picks each layer (column- or row-parallel by heads, packed by value channels, or replicated)
        self.q_proj, self.k_proj, self.v_proj, self.a_proj, self.b_proj = (
            linear(specs[f"{n}_proj.weight"], mp_cfg, shared_input=True) for n in "qkvab")
        if config.use_gate:
            self.g_proj = linear(specs["g_proj.weight"], mp_cfg, shared_input=True)
        self.o_proj = linear(specs["o_proj.weight"], mp_cfg, sequence_parallel=sp)
        self.A_log = local_parameter(specs["A_log"], tp, dtype)
        self.dt_bias = local_parameter(specs["dt_bias"], tp, dtype)
        if config.use_short_conv:
            for name in ("q", "k", "v"):
                setattr(self, f"{name}_conv1d", ShortConvolution(specs[f"{name}_conv1d.weight"], tp, dtype))
        self.o_norm = nn.Module()
        self.o_norm.weight = local_parameter(specs["o_norm.weight"], tp, dtype)

    @staticmethod
    def _out(y):
        return y[0] if isinstance(y, tuple) else y

    def forward(self, x: torch.Tensor, initial_state: Optional[MixerState] = None,
                output_final_state: bool = False):
        """Returns o [B, T, D], and with ``output_final_state`` the MixerState after x (the scan's state
        [B, value heads, dk, dv local] fp32, the q/k/v conv tails); ``initial_state``: the one before x
        (zeros when None). [B, T / TP, D] in and out with sequence parallelism."""
        xs = to_column_input(x, self.sequence_parallel)
        B, T, _ = xs.shape
        h, hv, dk, dv = self.heads, self.v_heads, self.head_k, self.head_v
        q, k, v = (self._out(p(xs)) for p in (self.q_proj, self.k_proj, self.v_proj))
        tails, cp = None, context.size() > 1
        if cp:
            context.check_no_state(initial_state, output_final_state)
        if self.config.use_short_conv:
            (q, k, v), tails = short_convs(self, "qkv", (q, k, v), initial_state, output_final_state)
        else:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        q, k = (l2_normalize(t.reshape(B, T, h, dk)) for t in (q, k))
        if hv > h:  # grouped value attention: key head j serves value heads j*hv/h .. (j+1)*hv/h - 1
            q, k = (t.repeat_interleave(hv // h, dim=2) for t in (q, k))
        a, b = self._out(self.a_proj(xs)), self._out(self.b_proj(xs))
        g = -torch.exp(maybe_reduced(self.A_log).float()) * F.softplus(a.float() + maybe_reduced(self.dt_bias).float())
        beta = torch.sigmoid(b.float())
        v = v.reshape(B, T, hv, dv)
        if cp:   # the state entering this rank's segment from the CP ranks before (parallel/context.py)
            def transition():   # prod_t a_t (I - b_t k_t k_t^T): the scan of zero values from the identity
                eye = torch.eye(dk, device=q.device).expand(B, hv, dk, dk)
                return gated_delta_rule(q, k, v.new_zeros(B, T, hv, dk), g, beta, scale=dk ** -0.5,
                                        initial_state=eye, output_final_state=True)[1]
            o, final_state = context.segment_scan(
                lambda h0, final: gated_delta_rule(q, k, v, g, beta, scale=dk ** -0.5, initial_state=h0,
                                                   output_final_state=final),
                transition, (B, hv, dk, v.shape[-1]), (B, hv, dk, dk), q.device, matrix=True), None
        else:
            o, final_state = gated_delta_rule(q, k, v, g, beta, scale=dk ** -0.5,
                                              initial_state=None if initial_state is None else initial_state.recurrent,
                                              output_final_state=output_final_state)
        o = self._norm(o, xs)
        out = self._out(self.o_proj(o.reshape(B, T, hv * dv)))
        return (out, MixerState(final_state, tails or {})) if output_final_state else out

    def _norm(self, o: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """o_norm: RMSNorm over each value head's channels times silu(g_proj(xs)) (fla's FusedRMSNormGated,
        all in fp32), or the plain RMSNorm without ``use_gate``. o [B, T, hv, dv_local]."""
        width = None if self.mode == "heads" else self.value_width
        y = head_rms_norm(o, maybe_reduced(self.o_norm.weight), self.config.norm_eps, width)
        if self.config.use_gate:
            y = y * F.silu(self._out(self.g_proj(xs)).float()).reshape(o.shape)
        return y.to(o.dtype)


class GDNBlock(FlaBlock):
    """fla's GatedDeltaNetBlock: x + attn(attn_norm(x)), then + mlp(mlp_norm(x)) (see FlaBlock).

    Under bf16: ``attn_norm.weight`` and ``mlp_norm.weight`` computed in fp32 (the RMSNorms run in fp32), the
    MLP's weights in bf16, the residual stream bf16 (fla's blocks do the same)."""
    MIXER = GatedDeltaNet


class GDNForCausalLM(CausalLM):
    """fla's GatedDeltaNetForCausalLM: Gated DeltaNet blocks between ``embeddings`` and ``norm`` (see
    CausalLM)."""
    EMBEDDING, NORM, BLOCK = layout.EMBEDDING, layout.NORM, GDNBlock
