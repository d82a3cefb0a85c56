"""StateX GLA, Gated DeltaNet and Mamba2 language models built from the libraries' own modules, for
``AutoModelForCausalLM`` with ``trust_remote_code=True``.

Copied beside the weights of an export whose recurrent-state shapes differ per layer, which the stock
classes (fla's GLAForCausalLM and GatedDeltaNetForCausalLM, transformers' Mamba2ForCausalLM) cannot build:
each layer here is the library's module made from that layer's config (:meth:`layer_config`), so parameter
names are the stock ones and the library's kernels run where they exist.

- Mamba2: transformers' ``Mamba2Block`` / ``Mamba2Mixer`` (mamba_ssm and causal_conv1d kernels when those
  import, transformers' PyTorch path otherwise) and its ``DynamicCache``, whose per-layer states are sized
  by each layer's first update, so every layer keeps its own d_state.
- GLA: fla's ``GatedLinearAttention``, ``GatedMLP`` and ``RMSNorm`` with fla's ``Cache`` (one state dict per
  layer). fla's modules are Triton only, so on CPU tensors each one runs fla's own PyTorch reference
  instead (``naive_recurrent_gla``, ``rms_norm_ref``) on the same weights.
- Gated DeltaNet: fla's ``GatedDeltaNet`` layer with that layer's key and value heads, in the same blocks and
  cache as GLA; on CPU tensors fla's references (``naive_gdn_gate``, ``naive_recurrent_gated_delta_rule``,
  the gated ``rms_norm_ref``).

Shapes: B batch, T time, D hidden; heads H (value heads Hv) of the layer, dk / dv their key / value widths.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.models.mamba2.modeling_mamba2 import (Mamba2Block, Mamba2ForCausalLM, Mamba2Model,
                                                        Mamba2PreTrainedModel, Mamba2RMSNorm)

from .configuration_statex import StateXGatedDeltaNetConfig, StateXGLAConfig, StateXMamba2Config

try:  # only fla exports (GLA, Gated DeltaNet) need fla: a Mamba2 export loads without it
    from fla.layers.gated_deltanet import GatedDeltaNet
    from fla.layers.gla import GatedLinearAttention
    from fla.layers.utils import get_layer_cache, update_layer_cache
    from fla.models.generation_utils import FLAGenerationMixin
    from fla.models.modeling_utils import FLAForCausalLM, FLAModel
    from fla.modules import GatedMLP, RMSNorm
    from fla.modules.norm.layernorm import rms_norm_ref
    from fla.modules.norm.layernorm_gated import rms_norm_ref as gated_rms_norm_ref
    from fla.ops.gated_delta_rule.gate import naive_gdn_gate
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule
    from fla.ops.gla.naive import naive_recurrent_gla
    _FLA_ERROR = None
# Any failure, not only ImportError: fla installed beside a broken dependency must not stop a Mamba2 export
# from loading, and an fla export reports the error itself (_fla_missing).
except Exception as e:  # noqa: BLE001
    _FLA_ERROR = e
    GatedLinearAttention = GatedDeltaNet = GatedMLP = RMSNorm = nn.Module
    FLAModel = FLAForCausalLM = PreTrainedModel
    FLAGenerationMixin = GenerationMixin


# --- GLA ----------------------------------------------------------------------------------------------

def _fla_missing(error: BaseException) -> str:
    """Why fla does not import here and the fix: fla itself missing, or a dependency of it (triton, which fla
    imports on every machine, CPU ones included)."""
    missing = (getattr(error, "name", None) or "").split(".")[0]
    if missing == "fla":
        fix = "pip install flash-linear-attention"
    elif missing:
        fix = f"fla imports {missing}, so install it (pip install {missing})"
    else:
        fix = "pip install flash-linear-attention triton, or repair the failing one"
    return (f"a StateX GLA or Gated DeltaNet export needs fla (flash-linear-attention), which does not import "
            f"here ({type(error).__name__}: {error}): {fix}")


class StateXRMSNorm(RMSNorm):
    """fla's RMSNorm (fused with the residual add when asked); fla's reference on the CPU."""

    def forward(self, x, residual=None, prenorm=False, residual_in_fp32=False):
        if x.is_cuda:
            return super().forward(x, residual, prenorm, residual_in_fp32)
        out = rms_norm_ref(x, self.weight, self.bias, residual, self.eps, prenorm, upcast=True)
        if prenorm and not residual_in_fp32:  # the reference returns the sum upcast; fla's kernel does not
            return out[0], out[1].to(x.dtype)
        return out


class StateXGatedMLP(GatedMLP):
    """fla's GatedMLP, down(silu(gate(x)) * up(x)); its fused SwiGLU is Triton, so silu on the CPU."""

    def forward(self, x, **kwargs):
        if x.is_cuda:
            return super().forward(x, **kwargs)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def short_conv_torch(conv: nn.Conv1d, x: torch.Tensor, cache) -> tuple[torch.Tensor, torch.Tensor]:
    """fla's ShortConvolution (depthwise causal conv, then SiLU) through torch's conv1d. x [B, T, C];
    cache [B, C, W] the last W inputs as fla keeps them (None: zeros). Returns y [B, T, C], next cache."""
    W = conv.kernel_size[0]
    xt = x.transpose(1, 2)
    past = xt.new_zeros(*xt.shape[:2], W) if cache is None else cache.to(xt.dtype)
    full = torch.cat([past, xt], dim=-1)
    y = F.conv1d(full, conv.weight, conv.bias, groups=xt.shape[1])[..., 1:]
    return F.silu(y).transpose(1, 2), full[..., -W:]


def qkv_torch(layer: nn.Module, x: torch.Tensor, attention_mask, past_key_values):
    """The CPU path's inputs of fla's GLA and Gated DeltaNet layers: x with left padding zeroed (zero inputs
    leave the state as if it started later), the layer's cache entry, q [B, T, K], k, v [B, T, V] after the
    short convolutions where the layer has them, and the conv cache to keep (None without)."""
    if attention_mask is not None:
        x = x * attention_mask[:, -x.shape[1]:, None].to(x.dtype)
    last = get_layer_cache(layer, past_key_values)
    q, k, v = layer.q_proj(x), layer.k_proj(x), layer.v_proj(x)
    if not layer.use_short_conv:
        return x, last, (q, k, v), None
    past = last["conv_state"] if last is not None else (None,) * 3
    convs = (layer.q_conv1d, layer.k_conv1d, layer.v_conv1d)
    (q, cq), (k, ck), (v, cv) = (short_conv_torch(c, t, s) for c, t, s in zip(convs, (q, k, v), past))
    return x, last, (q, k, v), (cq, ck, cv)


class TorchOnCPU:
    """Mixed into an fla layer: fla's forward on CUDA tensors; on CPU tensors ``forward_torch(x, last, q, k, v,
    conv_state, past_key_values)`` with :func:`qkv_torch`'s inputs. x [B, T, D] -> ([B, T, D], None, cache)."""

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        if hidden_states.is_cuda:
            return super().forward(hidden_states, attention_mask, past_key_values, use_cache, **kwargs)
        x, last, (q, k, v), conv_state = qkv_torch(self, hidden_states, attention_mask, past_key_values)
        return self.forward_torch(x, last, q, k, v, conv_state, past_key_values)


class StateXGLAAttention(TorchOnCPU, GatedLinearAttention):
    """fla's GatedLinearAttention with this layer's heads; on the CPU its steps run on fla's references."""

    def forward_torch(self, x, last, q, k, v, conv_state, past_key_values):
        T = x.shape[1]
        heads = lambda t, d: t.unflatten(-1, (-1, d))  # noqa: E731
        q, k, gk = heads(q, self.head_k_dim), heads(k, self.head_k_dim), heads(self.gk_proj(x), self.head_k_dim)
        gk = F.logsigmoid(gk) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            gk = gk.clamp_min(self.clamp_min)
        # fla's layer keeps the state value-first ([B, H, dv, dk]); the reference takes and gives [B, H, dk, dv]
        h0 = last["recurrent_state"].transpose(-1, -2) if last is not None else None
        o, state = naive_recurrent_gla(q, k, heads(v, self.head_v_dim), gk, h0, output_final_state=True)
        update_layer_cache(self, past_key_values, recurrent_state=state.transpose(-1, -2), conv_state=conv_state,
                           offset=T)
        if self.use_output_gate and self.fuse_norm_and_gate:
            g = heads(self.g_proj(x), self.head_v_dim)
            o = gated_rms_norm_ref(o, self.g_norm_swish_gate.weight, None, z=g, eps=self.g_norm_swish_gate.eps)
        else:
            o = rms_norm_ref(o, self.g_norm.weight, None, eps=self.g_norm.eps, upcast=True)
            if self.use_output_gate:
                o = o * F.silu(self.g_proj(x)).unflatten(-1, (-1, self.head_v_dim))
        return self.o_proj(o.flatten(-2)), None, past_key_values


class StateXFlaBlock(nn.Module):
    """fla's blocks: x + attn(attn_norm(x)), then + mlp(mlp_norm(x)), ``attn`` built by :meth:`mixer` from the
    layer's config. fla's own blocks take one config for every layer (and GLA's drops
    ``gate_logit_normalizer`` / ``gate_low_rank_dim``): hence built here."""

    def __init__(self, config, layer_idx: int):
        super().__init__()
        c = config.layer_config(layer_idx)
        self.attn_norm = StateXRMSNorm(c.hidden_size, eps=c.norm_eps)
        self.attn = self.mixer(c, layer_idx)
        self.mlp_norm = StateXRMSNorm(c.hidden_size, eps=c.norm_eps)
        self.mlp = StateXGatedMLP(c.hidden_size, c.hidden_ratio, c.intermediate_size, c.hidden_act)

    def mixer(self, c, layer_idx: int) -> nn.Module:
        raise NotImplementedError

    def forward(self, hidden_states, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        h, _, past_key_values = self.attn(self.attn_norm(hidden_states), attention_mask, past_key_values, use_cache)
        h, residual = self.mlp_norm(h, hidden_states, True)
        return residual + self.mlp(h), None, past_key_values, None


class StateXGLABlock(StateXFlaBlock):
    """fla's GLABlock with this layer's heads."""

    def mixer(self, c: StateXGLAConfig, layer_idx: int) -> nn.Module:
        return StateXGLAAttention(
            hidden_size=c.hidden_size, expand_k=c.expand_k, expand_v=c.expand_v, num_heads=c.num_heads,
            use_short_conv=c.use_short_conv, conv_size=c.conv_size, use_output_gate=c.use_output_gate,
            gate_fn=c.hidden_act, norm_eps=c.norm_eps, gate_logit_normalizer=c.gate_logit_normalizer,
            gate_low_rank_dim=c.gate_low_rank_dim, clamp_min=c.clamp_min, fuse_norm=c.fuse_norm, layer_idx=layer_idx)


class StateXGLAModel(FLAModel):
    """fla's GLAModel with per-layer heads: embeddings -> blocks -> norm."""

    config_class = StateXGLAConfig
    block_class = StateXGLABlock

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([self.block_class(config, i) for i in range(config.num_hidden_layers)])
        self.norm = StateXRMSNorm(config.hidden_size, eps=config.norm_eps)
        self.use_attnres = False
        self.gradient_checkpointing = False
        self.post_init()


class StateXGLAForCausalLM(FLAForCausalLM, FLAGenerationMixin):
    """fla's GLAForCausalLM with heads chosen per layer (names ``model.*``, ``lm_head.weight``)."""

    config_class = StateXGLAConfig
    model_class = StateXGLAModel
    base_model_prefix = "model"
    _no_split_modules = ["StateXGLABlock"]
    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

    def __init__(self, config):
        if _FLA_ERROR is not None:
            raise ImportError(_fla_missing(_FLA_ERROR)) from _FLA_ERROR
        super().__init__(config)
        self.model = self.model_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.criterion = nn.CrossEntropyLoss()  # fla's fused loss is Triton only; this one runs everywhere
        self.post_init()

    def forward(self, *args, cache=None, past_key_values=None, **kwargs):
        # generate passes the state as ``cache`` (transformers 5); fla's models read ``past_key_values``
        return super().forward(*args, past_key_values=cache if cache is not None else past_key_values, **kwargs)


# --- Gated DeltaNet -----------------------------------------------------------------------------------

class StateXGatedDeltaNetAttention(TorchOnCPU, GatedDeltaNet):
    """fla's GatedDeltaNet with this layer's key and value heads; on the CPU its steps run on fla's
    references."""

    def forward_torch(self, x, last, q, k, v, conv_state, past_key_values):
        T = x.shape[1]
        if not self.use_short_conv:
            q, k, v = F.silu(q), F.silu(k), F.silu(v)
        heads = lambda t, d: t.unflatten(-1, (-1, d))  # noqa: E731
        # fla's in-kernel l2norm (fp32, eps 1e-6), decay, write strength; value head i reads key head i // g
        q, k = (_l2norm(heads(t, self.head_k_dim)) for t in (q, k))
        g = naive_gdn_gate(self.a_proj(x), self.A_log, self.dt_bias)
        beta = self.b_proj(x).float().sigmoid() * (2.0 if self.allow_neg_eigval else 1.0)
        if self.num_v_heads > self.num_heads:
            q, k = (t.repeat_interleave(self.num_v_heads // self.num_heads, dim=2) for t in (q, k))
        # fla's layer keeps the state value-first ([B, Hv, dv, dk]); the reference takes and gives [B, Hv, dk, dv]
        h0 = last["recurrent_state"].transpose(-1, -2) if last is not None else None
        o, state = naive_recurrent_gated_delta_rule(q, k, heads(v, self.head_v_dim), beta, g, initial_state=h0,
                                                    output_final_state=True)
        update_layer_cache(self, past_key_values, recurrent_state=state.transpose(-1, -2), conv_state=conv_state,
                           offset=T)
        if self.use_gate:
            g_out = heads(self.g_proj(x), self.head_v_dim)
            o = gated_rms_norm_ref(o, self.o_norm.weight, None, z=g_out, eps=self.o_norm.eps)
        else:
            o = rms_norm_ref(o, self.o_norm.weight, None, eps=self.o_norm.eps, upcast=True)
        return self.o_proj(o.flatten(-2).to(x.dtype)), None, past_key_values


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    """fla's l2norm: x / sqrt(sum(x^2) + 1e-6) over each head's channels, in fp32."""
    xf = x.float()
    return xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + 1e-6)


class StateXGatedDeltaNetBlock(StateXFlaBlock):
    """fla's GatedDeltaNetBlock with this layer's key and value heads."""

    def mixer(self, c: StateXGatedDeltaNetConfig, layer_idx: int) -> nn.Module:
        return StateXGatedDeltaNetAttention(
            hidden_size=c.hidden_size, expand_v=c.expand_v, head_dim=c.head_dim, num_heads=c.num_heads,
            num_v_heads=c.num_v_heads, use_gate=c.use_gate, use_short_conv=c.use_short_conv, conv_size=c.conv_size,
            layer_idx=layer_idx, norm_eps=c.norm_eps, output_gate_activation=c.output_gate_activation)


class StateXGatedDeltaNetModel(StateXGLAModel):
    """fla's GatedDeltaNetModel with per-layer heads: embeddings -> blocks -> norm."""

    config_class = StateXGatedDeltaNetConfig
    block_class = StateXGatedDeltaNetBlock


class StateXGatedDeltaNetForCausalLM(StateXGLAForCausalLM):
    """fla's GatedDeltaNetForCausalLM with key and value heads chosen per layer (names ``model.*``,
    ``lm_head.weight``)."""

    config_class = StateXGatedDeltaNetConfig
    model_class = StateXGatedDeltaNetModel
    _no_split_modules = ["StateXGatedDeltaNetBlock"]


# --- Mamba2 -------------------------------------------------------------------------------------------

class StateXMamba2Model(Mamba2Model):
    """transformers' Mamba2Model with each block built from its layer's config (its own d_state) and
    ``embedding_rows`` embeddings."""

    config_class = StateXMamba2Config

    def __init__(self, config: StateXMamba2Config):
        Mamba2PreTrainedModel.__init__(self, config)  # Mamba2Model's would build every layer at max d_state
        self.embeddings = nn.Embedding(config.embedding_rows, config.hidden_size)
        self.layers = nn.ModuleList([Mamba2Block(config.layer_config(i), layer_idx=i)
                                     for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        self.norm_f = Mamba2RMSNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.post_init()


class StateXMamba2ForCausalLM(Mamba2ForCausalLM):
    """transformers' Mamba2ForCausalLM with d_state chosen per layer (names ``backbone.*``,
    ``lm_head.weight``); logits keep ``vocab_size`` of the ``embedding_rows`` columns."""

    config_class = StateXMamba2Config

    def __init__(self, config: StateXMamba2Config):
        Mamba2PreTrainedModel.__init__(self, config)
        self.backbone = StateXMamba2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.embedding_rows, bias=False)
        self.post_init()

    def forward(self, *args, labels=None, return_dict=None, **kwargs):
        out = super().forward(*args, return_dict=True, **kwargs)
        out.logits = out.logits[..., : self.config.vocab_size]
        if labels is not None:
            out.loss = self.loss_function(logits=out.logits, labels=labels, vocab_size=self.config.vocab_size)
        return out if return_dict is not False else out.to_tuple()
