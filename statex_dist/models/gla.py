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

from statex_dist.config import GLAConfig
from statex_dist.models.common import (LMHead, RMSNorm, SwiGLUMLP, column, embedding, normal_init,
                                       rms_norm, row)
from statex_dist.ops import causal_conv1d, gla_attention
from statex_dist.parallel import state
from statex_dist.parallel.layers import ReplicatedLinear, mark
from statex_dist.parallel.sharding import ShardSpec


class ShortConvolution(nn.Module):
    """fla's ShortConvolution: depthwise causal conv of width W, then SiLU. Weight [C, 1, W] as in fla.

    The channels split over TP with the projection that feeds them. x [B, T, C] -> [B, T, C].
    """

    def __init__(self, channels: int, width: int, spec: ShardSpec, dtype):
        super().__init__()
        tp = state.tp_size()
        self.weight = mark(nn.Parameter(torch.empty(spec.local_shape(tp), dtype=dtype)), spec)
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Conv1d's default, as fla's module inherits it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return causal_conv1d(x, self.weight[:, 0, :], None, activation="silu")[0]


class GatedLinearAttention(nn.Module):
    """One GLA token mixer (fla's ``GatedLinearAttention``) with ``num_heads`` heads, heads split over TP.

    q, k, v, g (output gate) and the second gate projection are column-parallel, o row-parallel; the
    low-rank first gate projection and the per-head output norm weight are replicated.
    x [B, T, D] -> [B, T, D].
    """

    def __init__(self, cfg: GLAConfig, layer: int, mcfg):
        super().__init__()
        D, K, V, H = cfg.hidden_size, cfg.key_dim, cfg.value_dim, cfg.num_heads[layer]
        tp = state.tp_size()
        if H % tp:
            raise ValueError(f"GLA layer {layer}: {H} heads do not split over TP={tp}")
        self.cfg, self.layer = cfg, layer
        self.local_heads = H // tp
        self.head_k, self.head_v = K // H, V // H
        dtype = mcfg.params_dtype
        self.q_proj = column(D, K, mcfg, layer)
        self.k_proj = column(D, K, mcfg, layer)
        self.v_proj = column(D, V, mcfg, layer)
        if cfg.use_output_gate:
            self.g_proj = column(D, V, mcfg, layer)
        if cfg.use_short_conv:
            for name, width in (("q", K), ("k", K), ("v", V)):
                spec = ShardSpec((width, 1, cfg.conv_size), dim=0, layer=layer)
                setattr(self, f"{name}_conv1d", ShortConvolution(width, cfg.conv_size, spec, dtype))
        r = cfg.gate_low_rank_dim
        low_rank = ReplicatedLinear(D, r, layer=layer, dtype=dtype)
        normal_init()(low_rank.weight)
        self.gk_proj = nn.ModuleList([low_rank, column(r, K, mcfg, layer, bias=True)])
        with torch.no_grad():
            self.gk_proj[1].bias.zero_()
        self.o_proj = row(V, D, mcfg, layer)
        # fla's per-head output norm: one weight of a head's value width, shared by all heads
        self.g_norm = nn.Module()
        self.g_norm.weight = mark(nn.Parameter(torch.ones(self.head_v, dtype=dtype)),
                                  ShardSpec((self.head_v,), grad_reduce=True, layer=layer))

    def forward(self, x: torch.Tensor, initial_state: Optional[torch.Tensor] = None,
                output_final_state: bool = False):
        B, T, _ = x.shape
        h, dk, dv = self.local_heads, self.head_k, self.head_v
        q, k, v = self.q_proj(x)[0], self.k_proj(x)[0], self.v_proj(x)[0]
        if self.cfg.use_short_conv:
            q, k, v = self.q_conv1d(q), self.k_conv1d(k), self.v_conv1d(v)
        gk = self.gk_proj[1](self.gk_proj[0](x))[0]
        q, k, gk = (t.reshape(B, T, h, dk) for t in (q, k, gk))
        v = v.reshape(B, T, h, dv)
        gk = F.logsigmoid(gk) / self.cfg.gate_logit_normalizer
        if self.cfg.clamp_min is not None:
            gk = gk.clamp_min(self.cfg.clamp_min)
        o, final_state = gla_attention(q, k, v, gk, scale=dk ** -0.5, initial_state=initial_state,
                                       output_final_state=output_final_state)
        o = rms_norm(o, self.g_norm.weight, self.cfg.norm_eps)
        o = o.reshape(B, T, h * dv)
        if self.cfg.use_output_gate:
            o = o * F.silu(self.g_proj(x)[0])
        out = self.o_proj(o)[0]
        return (out, final_state) if output_final_state else out


class GLABlock(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x)). x [B, T, D] -> [B, T, D]."""

    def __init__(self, cfg: GLAConfig, layer: int, mcfg):
        super().__init__()
        self.layer = layer
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, layer, mcfg.params_dtype)
        self.attn = GatedLinearAttention(cfg, layer, mcfg)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, layer, mcfg.params_dtype)
        self.mlp = SwiGLUMLP(cfg.hidden_size, cfg.intermediate_size, mcfg, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class GLAForCausalLM(nn.Module):
    """Embedding -> GLA blocks -> final norm -> LM head (vocab-parallel, optionally tied).

    ``forward(input_ids [B, T])`` returns logits [B, T, vocab]; with ``labels`` [B, T] it returns the
    mean cross entropy (labels equal to -100 are ignored).
    """

    def __init__(self, config: GLAConfig, dtype: torch.dtype = torch.float32, init: bool = True):
        super().__init__()
        state.ensure_initialized()
        self.config = config
        mcfg = state.megatron_config(dtype, init)
        padded = config.padded_vocab_size(state.tp_size())
        self.embeddings = embedding(padded, config.hidden_size, mcfg)
        self.layers = nn.ModuleList([GLABlock(config, i, mcfg) for i in range(config.num_layers)])
        self.norm = RMSNorm(config.hidden_size, config.norm_eps, None, dtype)
        self.lm_head = LMHead(config.hidden_size, config.vocab_size, padded, mcfg, config.tie_word_embeddings)

    def forward(self, input_ids: torch.Tensor, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.embeddings(input_ids)
        for block in self.layers:
            h = block(h)
        local_logits = self.lm_head(self.norm(h), self.embeddings.weight)
        if labels is not None:
            return self.lm_head.loss(local_logits, labels)
        return self.lm_head.logits(local_logits)


def param_specs(config: GLAConfig, tp: int = 1) -> dict[str, ShardSpec]:
    """Every parameter's full shape and TP layout, from the config alone (no model is built)."""
    D, K, V, r = config.hidden_size, config.key_dim, config.value_dim, config.gate_low_rank_dim
    padded = config.padded_vocab_size(tp)
    specs = {"embeddings.weight": ShardSpec((padded, D), dim=0), "norm.weight": ShardSpec((D,))}
    if not config.tie_word_embeddings:
        specs["lm_head.weight"] = ShardSpec((padded, D), dim=0)
    for i, H in enumerate(config.num_heads):
        p = f"layers.{i}."
        s = {
            "attn_norm.weight": ShardSpec((D,), layer=i),
            "attn.q_proj.weight": ShardSpec((K, D), dim=0, layer=i),
            "attn.k_proj.weight": ShardSpec((K, D), dim=0, layer=i),
            "attn.v_proj.weight": ShardSpec((V, D), dim=0, layer=i),
            "attn.gk_proj.0.weight": ShardSpec((r, D), grad_reduce=True, layer=i),
            "attn.gk_proj.1.weight": ShardSpec((K, r), dim=0, layer=i),
            "attn.gk_proj.1.bias": ShardSpec((K,), dim=0, layer=i),
            "attn.o_proj.weight": ShardSpec((D, V), dim=1, layer=i),
            "attn.g_norm.weight": ShardSpec((V // H,), grad_reduce=True, layer=i),
            "mlp_norm.weight": ShardSpec((D,), layer=i),
            "mlp.gate_proj.weight": ShardSpec((config.intermediate_size, D), dim=0, layer=i),
            "mlp.up_proj.weight": ShardSpec((config.intermediate_size, D), dim=0, layer=i),
            "mlp.down_proj.weight": ShardSpec((D, config.intermediate_size), dim=1, layer=i),
        }
        if config.use_output_gate:
            s["attn.g_proj.weight"] = ShardSpec((V, D), dim=0, layer=i)
        if config.use_short_conv:
            for name, width in (("q", K), ("k", K), ("v", V)):
                s[f"attn.{name}_conv1d.weight"] = ShardSpec((width, 1, config.conv_size), dim=0, layer=i)
        specs.update({p + k: v for k, v in s.items()})
    return specs
