"""StateX GLA and Mamba2 language models in plain PyTorch, for ``AutoModelForCausalLM`` with
``trust_remote_code=True``.

Self-contained (torch and transformers only): this file is copied beside the weights of an export
whose recurrent-state shapes differ per layer, which the stock classes (fla's GLAForCausalLM,
transformers' Mamba2ForCausalLM) cannot build. Parameter names equal theirs, so the weights keep the
stock layout; the math equals statex-dist's models (``statex_dist.models``, ``statex_dist.ops``).

Shapes: B batch, T time, D hidden. GLA: K key width, V value width, H heads of the layer, dk = K / H,
dv = V / H. Mamba2: E = expand * D, Hh heads of P = head_dim, G groups, N the layer's d_state, W conv
width.

Generation carries a recurrent state per layer (:class:`StateXCache`), so each new token costs one
step. An ``attention_mask`` with left padding is exact: padded steps feed zeros into the token mixers,
which leaves the state as if the sequence started after them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_statex import StateXGLAConfig, StateXMamba2Config


# --- shared pieces ------------------------------------------------------------------------------------

def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim in fp32, returned in x's dtype. x [..., C], weight [C]."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                state: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Depthwise causal conv, then SiLU. x [B, T, C]; weight [C, 1, W]; bias [C] or None; state
    [B, C, W-1]: the inputs before x (zeros at the sequence start). Returns out [B, T, C] in x's dtype
    and the next state [B, C, W-1]."""
    W = weight.shape[-1]
    xt = x.transpose(1, 2)
    xx = F.pad(xt, (W - 1, 0)) if state is None else torch.cat([state.to(xt.dtype), xt], dim=-1)
    out = F.silu(F.conv1d(xx.to(weight.dtype), weight, bias, groups=weight.shape[0]))
    return out.transpose(1, 2).to(x.dtype), xx[..., xx.shape[-1] - (W - 1):]


class StateXCache:
    """The recurrent state of every layer; a forward call with it advances it by its tokens.

    ``conv[i]``: a tuple with the last W-1 inputs of each short conv of layer i ([B, C, W-1]);
    ``ssm[i]``: the scan state (GLA [B, H, dk, dv], Mamba2 [B, Hh, P, N], fp32); ``seen``: the tokens
    consumed so far. Not a transformers ``Cache``: these models keep no per-token keys or values.
    """

    is_compileable = False

    def __init__(self, num_layers: int):
        self.conv: list[Optional[tuple]] = [None] * num_layers
        self.ssm: list[Optional[torch.Tensor]] = [None] * num_layers
        self.seen = 0

    @property
    def is_linear(self) -> list[bool]:
        return [True] * len(self.ssm)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Keep the batch rows ``beam_idx`` (beam search)."""
        def pick(t):
            return None if t is None else t.index_select(0, beam_idx.to(t.device))
        self.ssm = [pick(s) for s in self.ssm]
        self.conv = [None if c is None else tuple(pick(t) for t in c) for c in self.conv]


# --- GLA ----------------------------------------------------------------------------------------------

def _suffix_sum(g: torch.Tensor) -> torch.Tensor:
    """Exclusive suffix sum along dim -2: out_j = sum_{s > j} g_s."""
    return F.pad(g.flip(-2).cumsum(-2)[..., :-1, :], (0, 0, 1, 0)).flip(-2)


def _intra_chunk_scores(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """a_ij = sum_k q_ik k_jk exp(sum_{j < s <= i} g_sk) for j <= i, else 0. q, k, g [..., C, K] with C a
    power of two -> [..., C, C]. Built by halving blocks so every exponent is <= 0 and nothing larger than
    [..., C, C] is formed."""
    *lead, C, K = q.shape
    a = (q * k).sum(-1)[..., None, None]
    s = 2
    while s <= C:
        h = s // 2
        qb, kb, gb = (t.reshape(*lead, C // s, 2, h, K) for t in (q, k, g))
        q2 = qb[..., 1, :, :] * gb[..., 1, :, :].cumsum(-2).exp()
        k1 = kb[..., 0, :, :] * _suffix_sum(gb[..., 0, :, :]).exp()
        lower = q2 @ k1.transpose(-1, -2)
        halves = a.reshape(*lead, C // s, 2, h, h)
        top = F.pad(halves[..., 0, :, :], (0, h))
        bottom = torch.cat([lower, halves[..., 1, :, :]], dim=-1)
        a = torch.cat([top, bottom], dim=-2)
        s *= 2
    return a.reshape(*lead, C, C)


def chunk_gla(q, k, v, g, scale: float, initial_state=None, chunk_size: int = 64):
    """Gated linear attention, chunked: S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = scale q_t S_t.

    q, k, g [B, T, H, dk] (g the log-decay, <= 0); v [B, T, H, dv]; initial_state [B, H, dk, dv] or
    None. Returns o [B, T, H, dv] in q's dtype and the final state [B, H, dk, dv] fp32.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype = q.dtype
    C = min(chunk_size, 1 << max(T - 1, 0).bit_length())
    Tp = -(-T // C) * C
    N = Tp // C
    q, k, v, g = (t.transpose(1, 2).float() for t in (q, k, v, g))
    if Tp != T:  # zero tail: no decay, no update
        q, k, v, g = (F.pad(t, (0, 0, 0, Tp - T)) for t in (q, k, v, g))
    q = q * scale
    q, k, g = (t.reshape(B, H, N, C, K) for t in (q, k, g))
    v = v.reshape(B, H, N, C, V)
    G = g.cumsum(-2)
    o = _intra_chunk_scores(q, k, g) @ v
    upd = (k * _suffix_sum(g).exp()).transpose(-1, -2) @ v  # each chunk's state increment [B, H, N, K, V]
    decay = G[..., -1:, :].transpose(-1, -2).exp()
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    starts = []
    for decay_n, upd_n in zip(decay.unbind(2), upd.unbind(2)):
        starts.append(S)
        S = decay_n * S + upd_n
    o = o + (q * G.exp()) @ torch.stack(starts, dim=2)
    return o.reshape(B, H, Tp, V)[:, :, :T].transpose(1, 2).to(dtype), S


class StateXGLAAttention(nn.Module):
    """fla's GatedLinearAttention with ``statex_num_heads[layer_idx]`` heads. x [B, T, D] -> [B, T, D]."""

    def __init__(self, config: StateXGLAConfig, layer_idx: int):
        super().__init__()
        D, K, V = config.hidden_size, config.key_dim, config.value_dim
        H = config.statex_num_heads[layer_idx]
        self.layer_idx, self.heads, self.head_k, self.head_v = layer_idx, H, K // H, V // H
        self.use_short_conv, self.use_output_gate = config.use_short_conv, config.use_output_gate
        self.gate_logit_normalizer, self.clamp_min = config.gate_logit_normalizer, config.clamp_min
        self.q_proj = nn.Linear(D, K, bias=False)
        self.k_proj = nn.Linear(D, K, bias=False)
        self.v_proj = nn.Linear(D, V, bias=False)
        if config.use_output_gate:
            self.g_proj = nn.Linear(D, V, bias=False)
        if config.use_short_conv:
            W = config.conv_size
            self.q_conv1d = nn.Conv1d(K, K, W, groups=K, bias=False)
            self.k_conv1d = nn.Conv1d(K, K, W, groups=K, bias=False)
            self.v_conv1d = nn.Conv1d(V, V, W, groups=V, bias=False)
        r = config.gate_low_rank_dim
        self.gk_proj = nn.Sequential(nn.Linear(D, r, bias=False), nn.Linear(r, K, bias=True))
        self.o_proj = nn.Linear(V, D, bias=False)
        # fla names the per-head output norm after whether it is fused with the swish gate
        self.norm_name = "g_norm_swish_gate" if config.fuse_norm and config.use_output_gate else "g_norm"
        setattr(self, self.norm_name, RMSNorm(self.head_v, config.norm_eps))

    def forward(self, x: torch.Tensor, cache: Optional[StateXCache] = None) -> torch.Tensor:
        B, T, _ = x.shape
        i, h, dk, dv = self.layer_idx, self.heads, self.head_k, self.head_v
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.use_short_conv:
            states = cache.conv[i] if cache is not None and cache.conv[i] is not None else (None,) * 3
            convs = (self.q_conv1d, self.k_conv1d, self.v_conv1d)
            (q, sq), (k, sk), (v, sv) = (causal_conv(t, c.weight, None, s) for t, c, s in zip((q, k, v), convs, states))
            if cache is not None:
                cache.conv[i] = (sq, sk, sv)
        gk = self.gk_proj(x)
        q, k, gk = (t.reshape(B, T, h, dk) for t in (q, k, gk))
        v = v.reshape(B, T, h, dv)
        gk = F.logsigmoid(gk) / self.gate_logit_normalizer
        if self.clamp_min is not None:
            gk = gk.clamp_min(self.clamp_min)
        o, state = chunk_gla(q, k, v, gk, dk ** -0.5, None if cache is None else cache.ssm[i])
        if cache is not None:
            cache.ssm[i] = state
        o = getattr(self, self.norm_name)(o).reshape(B, T, h * dv)
        if self.use_output_gate:
            o = o * F.silu(self.g_proj(x))
        return self.o_proj(o)


class StateXGLAMLP(nn.Module):
    """fla's GatedMLP: down(silu(gate(x)) * up(x)). x [B, T, D] -> [B, T, D]."""

    def __init__(self, config: StateXGLAConfig):
        super().__init__()
        D, I = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(D, I, bias=False)
        self.up_proj = nn.Linear(D, I, bias=False)
        self.down_proj = nn.Linear(I, D, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class StateXGLABlock(nn.Module):
    """x + attn(norm(x)), then + mlp(norm(x)); mask [B, T, 1] zeroes the attention input at padding."""

    def __init__(self, config: StateXGLAConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.attn = StateXGLAAttention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = StateXGLAMLP(config)

    def forward(self, x, mask=None, cache=None):
        h = self.attn_norm(x)
        if mask is not None:
            h = h * mask.to(h.device, h.dtype)
        x = x + self.attn(h, cache)
        return x + self.mlp(self.mlp_norm(x))


class StateXGLAModel(nn.Module):
    """embeddings -> blocks -> norm. h [B, T, D] (embedded) -> [B, T, D]."""

    def __init__(self, config: StateXGLAConfig):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList([StateXGLABlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)

    def forward(self, h, mask=None, cache=None):
        for layer in self.layers:
            h = layer(h, mask, cache)
        return self.norm(h)


# --- Mamba2 -------------------------------------------------------------------------------------------

def ssd_scan(x, dt, A, B, C, chunk_size: int, D, dt_bias, dt_limit, initial_state=None):
    """Mamba2's SSD scan, chunked: h_t = exp(dt_t A) h_{t-1} + dt_t x_t^T B_t, y_t = h_t C_t + D x_t.

    x [b, l, h, p]; dt [b, l, h] raw (dt_bias added, softplus, clamped to dt_limit unless (0, inf));
    A [h] (< 0); B, C [b, l, g, n], head i reads group i // (h / g); D [h]; initial_state [b, h, p, n]
    or None. Returns y [b, l, h, p] in x's dtype and the final state [b, h, p, n] fp32.
    """
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    hg = h // g
    L = chunk_size
    lp = -(-l // L) * L
    nc = lp // L
    dt = F.softplus(dt.float() + dt_bias.float())
    if tuple(dt_limit) != (0.0, math.inf):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    xf, Bf, Cf = x.float(), B.float(), C.float()
    if lp != l:  # dt = 0 on the padding: no decay, no input
        xf, Bf, Cf = (F.pad(t, (0, 0, 0, 0, 0, lp - l)) for t in (xf, Bf, Cf))
        dt = F.pad(dt, (0, 0, 0, lp - l))
    # heads as [g, hg] so that C B^T is computed once per group
    xc = xf.reshape(b, nc, L, g, hg, p).permute(0, 1, 3, 4, 2, 5)  # [b, c, g, hg, L, p]
    dtc = dt.reshape(b, nc, L, g, hg).permute(0, 1, 3, 4, 2)  # [b, c, g, hg, L]
    Bc = Bf.reshape(b, nc, L, g, n).permute(0, 1, 3, 2, 4)  # [b, c, g, L, n]
    Cc = Cf.reshape(b, nc, L, g, n).permute(0, 1, 3, 2, 4)
    dA = dtc * A.float().reshape(g, hg, 1)
    Acum = dA.cumsum(-1)
    xdt = xc * dtc[..., None]
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    seg = (Acum[..., :, None] - Acum[..., None, :]).masked_fill(~causal, -math.inf)
    y = (seg.exp() * (Cc @ Bc.transpose(-1, -2))[:, :, :, None]) @ xdt  # within chunks
    suffix = F.pad(dA.flip(-1).cumsum(-1)[..., :-1], (1, 0)).flip(-1)
    upd = (xdt * suffix.exp()[..., None]).transpose(-1, -2) @ Bc[:, :, :, None]  # [b, c, g, hg, p, n]
    S = xf.new_zeros(b, g, hg, p, n) if initial_state is None else initial_state.float().reshape(b, g, hg, p, n)
    decay = Acum[..., -1:].exp()[..., None]
    starts = []
    for decay_c, upd_c in zip(decay.unbind(1), upd.unbind(1)):
        starts.append(S)
        S = decay_c * S + upd_c
    S_prev = torch.stack(starts, dim=1)
    y = y + (Cc[:, :, :, None] @ S_prev.transpose(-1, -2)) * Acum.exp()[..., None]  # from chunk-start states
    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, lp, h, p)[:, :l]
    y = y + x.float() * D.float()[:, None]
    return y.to(x.dtype), S.reshape(b, h, p, n)


class StateXGatedRMSNorm(nn.Module):
    """norm(y * silu(z)) over groups of E / G channels (mamba_ssm's RMSNormGated, norm_before_gate=False).
    y, z [B, T, E] -> [B, T, E] in y's dtype."""

    def __init__(self, size: int, groups: int, eps: float):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        u = y.float() * F.silu(z.float())
        u = u.reshape(*u.shape[:-1], self.groups, -1)
        u = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + self.eps)
        return (u.reshape(y.shape) * self.weight.float()).to(y.dtype)


class StateXMamba2Mixer(nn.Module):
    """Mamba2 mixer with ``statex_d_state[layer_idx]`` states. x [B, T, D] -> [B, T, D].

    in_proj -> [z | xBC | dt]; causal conv + SiLU over xBC = [x | B | C]; SSD scan with A = -exp(A_log);
    gated norm with z; out_proj.
    """

    def __init__(self, config: StateXMamba2Config, layer_idx: int):
        super().__init__()
        D, E, G, Hh = config.hidden_size, config.expand * config.hidden_size, config.n_groups, config.num_heads
        N, W = config.statex_d_state[layer_idx], config.conv_kernel
        self.layer_idx, self.E, self.G, self.N, self.Hh, self.P = layer_idx, E, G, N, Hh, config.head_dim
        self.chunk_size, self.dt_limit = config.chunk_size, tuple(config.time_step_limit)
        C = E + 2 * G * N
        self.in_proj = nn.Linear(D, 2 * E + 2 * G * N + Hh, bias=False)
        self.conv1d = nn.Conv1d(C, C, W, groups=C, bias=True)  # the exports always hold conv1d.bias
        self.dt_bias = nn.Parameter(torch.ones(Hh))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, Hh + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(Hh))
        self.norm = StateXGatedRMSNorm(E, G, config.layer_norm_epsilon)
        self.out_proj = nn.Linear(E, D, bias=False)

    def forward(self, x, mask=None, cache=None):
        B, T, _ = x.shape
        i, E, GN, Hh, N = self.layer_idx, self.E, self.G * self.N, self.Hh, self.N
        z, xBC, dt = self.in_proj(x).split([E, E + 2 * GN, Hh], dim=-1)
        state = cache.conv[i][0] if cache is not None and cache.conv[i] is not None else None
        xBC, conv_state = causal_conv(xBC, self.conv1d.weight, self.conv1d.bias, state)
        if mask is not None:  # padded steps add nothing to the state (their conv input is zero already)
            xBC = xBC * mask.to(xBC.device, xBC.dtype)
        xs, Bm, Cm = xBC.split([E, GN, GN], dim=-1)
        y, ssm_state = ssd_scan(
            xs.reshape(B, T, Hh, self.P), dt, -torch.exp(self.A_log.float()), Bm.reshape(B, T, self.G, N),
            Cm.reshape(B, T, self.G, N), min(self.chunk_size, T), self.D, self.dt_bias, self.dt_limit,
            None if cache is None else cache.ssm[i])
        if cache is not None:
            cache.conv[i], cache.ssm[i] = (conv_state,), ssm_state
        y = self.norm(y.reshape(B, T, E), z)
        return self.out_proj(y.to(x.dtype))


class StateXMamba2Block(nn.Module):
    """x + mixer(norm(x)), the sum taken in fp32 when ``residual_in_fp32``; mask [B, T, 1] zeroes the
    mixer input at padding."""

    def __init__(self, config: StateXMamba2Config, layer_idx: int):
        super().__init__()
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mixer = StateXMamba2Mixer(config, layer_idx)

    def forward(self, x, mask=None, cache=None):
        h = self.norm(x)
        if mask is not None:
            h = h * mask.to(h.device, h.dtype)
        out = self.mixer(h, mask, cache)
        residual = x.float() if self.residual_in_fp32 else x
        return (residual + out).to(x.dtype)


class StateXMamba2Model(nn.Module):
    """embeddings -> blocks -> norm_f. h [B, T, D] (embedded) -> [B, T, D]."""

    def __init__(self, config: StateXMamba2Config):
        super().__init__()
        self.embeddings = nn.Embedding(config.embedding_rows, config.hidden_size)
        self.layers = nn.ModuleList([StateXMamba2Block(config, i) for i in range(config.num_hidden_layers)])
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)

    def forward(self, h, mask=None, cache=None):
        for layer in self.layers:
            h = layer(h, mask, cache)
        return self.norm_f(h)


# --- causal LM wrappers -------------------------------------------------------------------------------

@dataclass
class StateXCausalLMOutput(ModelOutput):
    """logits [B, T', vocab_size]; loss when labels were given; cache when asked (``use_cache``)."""

    loss: Optional[torch.FloatTensor] = None
    logits: Optional[torch.FloatTensor] = None
    cache: Optional[StateXCache] = None


class StateXPreTrainedModel(PreTrainedModel):
    supports_gradient_checkpointing = False
    _no_split_modules = ["StateXGLABlock", "StateXMamba2Block"]
    _is_stateful = True  # no rewinding to an earlier token: assisted generation is refused

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model makes its own StateXCache

    @torch.no_grad()
    def _init_weights(self, module):
        """Only for tensors a checkpoint lacks: fla / mamba_ssm-style initialisation."""
        std = getattr(self.config, "initializer_range", 0.02)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Conv1d):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (RMSNorm, StateXGatedRMSNorm)):
            nn.init.ones_(module.weight)
        elif isinstance(module, StateXMamba2Mixer):
            # dt log-uniform in [1e-3, 1e-1] (dt_bias its inverse softplus), A = 1..Hh, D = 1
            dt = torch.exp(torch.rand(module.Hh) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)).clamp(min=1e-4)
            module.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
            module.A_log.copy_(torch.log(torch.arange(1, module.Hh + 1, dtype=torch.float32)))
            nn.init.ones_(module.D)


class _StateXCausalLM:
    """forward and generation of both models (first in the bases, before PreTrainedModel)."""

    def _backbone(self) -> nn.Module:
        return getattr(self, self.base_model_prefix)

    def get_input_embeddings(self):
        return self._backbone().embeddings

    def set_input_embeddings(self, value):
        self._backbone().embeddings = value

    def get_output_embeddings(self):
        return getattr(self, "lm_head", None)  # tied: the logits use the embedding itself

    def _make_head(self, config, rows: int) -> None:
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, rows, bias=False)

    def forward(self, input_ids: Optional[torch.LongTensor] = None, attention_mask: Optional[torch.Tensor] = None,
                inputs_embeds: Optional[torch.Tensor] = None, labels: Optional[torch.LongTensor] = None,
                cache: Optional[StateXCache] = None, use_cache: Optional[bool] = None, logits_to_keep=0,
                return_dict: Optional[bool] = None, past_key_values: Optional[StateXCache] = None,
                cache_params: Optional[StateXCache] = None, **kwargs):
        """input_ids [B, T] (or inputs_embeds [B, T, D]) -> logits [B, T, vocab_size].

        ``cache``: the state after the earlier tokens (made when ``use_cache`` and none is given; it
        advances in place). ``attention_mask`` [B, T_all]: its last T columns mark the real tokens.
        ``labels`` [B, T]: the mean next-token cross entropy (logits at t predict labels at t + 1;
        -100 is ignored). ``logits_to_keep``: an int k keeps the last k positions (0: all).
        """
        cache = next((c for c in (cache, past_key_values, cache_params) if c is not None), None)
        h = self.get_input_embeddings()(input_ids) if inputs_embeds is None else inputs_embeds
        T = h.shape[1]
        if cache is None and use_cache:
            cache = StateXCache(self.config.num_hidden_layers)
        mask = None
        if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask[:, -T:].all()):
            mask = attention_mask[:, -T:, None]
        h = self._backbone()(h, mask, cache)
        if cache is not None:
            cache.seen += T
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        head = self.lm_head.weight if hasattr(self, "lm_head") else self.get_input_embeddings().weight
        logits = F.linear(h[:, keep], head)[..., : self.config.vocab_size]
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                                   labels[:, 1:].to(logits.device).reshape(-1), ignore_index=-100)
        out = StateXCausalLMOutput(loss=loss, logits=logits, cache=cache)
        return out if return_dict is not False else out.to_tuple()

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, inputs_embeds=None, use_cache=None,
                                      cache=None, past_key_values=None, cache_params=None, logits_to_keep=None,
                                      **kwargs):
        """The tokens the cache has not consumed yet: the prompt first, then one token a step (the
        whole sequence every step when ``use_cache=False``)."""
        if inputs_embeds is not None:
            raise ValueError("StateX models generate from input_ids; inputs_embeds are not supported")
        cache = next((c for c in (cache, past_key_values, cache_params) if c is not None), None)
        if cache is not None:
            input_ids = input_ids[:, cache.seen:]
        inputs = {"input_ids": input_ids.contiguous(), "attention_mask": attention_mask, "cache": cache,
                  "use_cache": use_cache}
        if logits_to_keep is not None:
            inputs["logits_to_keep"] = logits_to_keep
        return inputs

    def _reorder_cache(self, cache: StateXCache, beam_idx: torch.LongTensor) -> StateXCache:
        cache.reorder_cache(beam_idx)
        return cache


class StateXGLAForCausalLM(_StateXCausalLM, StateXPreTrainedModel, GenerationMixin):
    """fla's GLAForCausalLM with heads chosen per layer (names ``model.*``, ``lm_head.weight``)."""

    config_class = StateXGLAConfig
    base_model_prefix = "model"

    def __init__(self, config: StateXGLAConfig):
        super().__init__(config)
        self.model = StateXGLAModel(config)
        self._make_head(config, config.vocab_size)
        self.post_init()


class StateXMamba2ForCausalLM(_StateXCausalLM, StateXPreTrainedModel, GenerationMixin):
    """transformers' Mamba2ForCausalLM with d_state chosen per layer (names ``backbone.*``,
    ``lm_head.weight``)."""

    config_class = StateXMamba2Config
    base_model_prefix = "backbone"

    def __init__(self, config: StateXMamba2Config):
        super().__init__(config)
        self.backbone = StateXMamba2Model(config)
        self._make_head(config, config.embedding_rows)
        self.post_init()
