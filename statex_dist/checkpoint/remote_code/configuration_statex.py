"""Configurations of StateX models whose recurrent-state shapes differ per layer (``trust_remote_code``).

Copied beside the weights of an export. The keys are those of the stock configs (fla's GLAConfig and
GatedDeltaNetConfig, transformers' Mamba2Config) plus the per-layer shapes: ``statex_num_heads`` (GLA and
Gated DeltaNet heads of each layer), ``statex_num_v_heads`` (Gated DeltaNet value heads of each layer) and
``statex_d_state`` (Mamba2 d_state of each layer). :meth:`layer_config` gives the config of one layer,
which the library's modules are built from. Defaults equal those of statex-dist's checkpoint readers, so
both read a file the same way.
"""
from __future__ import annotations

import copy
import math

from huggingface_hub.dataclasses import strict
from transformers import Mamba2Config, PreTrainedConfig


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _float(x) -> float:
    """A JSON float; transformers 5 writes inf as {"__float__": "Infinity"}."""
    if isinstance(x, dict) and "__float__" in x:
        return float(x["__float__"])
    return float(x)


def _per_layer(name: str, values, default: int, layers: int) -> list[int]:
    values = [int(v) for v in values] if values else [int(default)] * layers
    if len(values) != layers:
        raise ValueError(f"{name} has {len(values)} entries but num_hidden_layers is {layers}")
    return values


def _with(config, **overrides):
    """A shallow copy of ``config`` with ``overrides`` set: one layer's view of the model config."""
    layer = copy.copy(config)
    layer.__dict__.update(overrides)
    return layer


# fla GLA options the model here does not implement, with the value they must have
_GLA_FIXED = {"num_kv_heads": None, "feature_map": None, "elementwise_affine": True, "use_gv": False,
              "use_gk": True, "attn": None, "attnres_block_size": None}


class StateXGLAConfig(PreTrainedConfig):
    """fla's GLAConfig with ``statex_num_heads``: the heads of each layer (``num_heads`` is their max).

    Key width K = hidden_size * expand_k and value width V = hidden_size * expand_v are the same in
    every layer; a layer of H heads has heads of K / H x V / H.
    """

    model_type = "statex_gla"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    def __init__(self, vocab_size: int = 32000, hidden_size: int = 2048, num_hidden_layers: int = 24,
                 num_heads: int = 4, statex_num_heads=None, expand_k: float = 0.5, expand_v: float = 1.0,
                 hidden_ratio=4, intermediate_size=None, use_short_conv: bool = False, conv_size: int = 4,
                 use_output_gate: bool = True, clamp_min=None, hidden_act: str = "swish", norm_eps: float = 1e-6,
                 fuse_norm: bool = True, gate_logit_normalizer: float = 16, gate_low_rank_dim: int = 16,
                 initializer_range: float = 0.02, use_cache: bool = True, tie_word_embeddings: bool = False,
                 pad_token_id=None, bos_token_id=1, eos_token_id=2, **kwargs):
        for key, want in _GLA_FIXED.items():
            if kwargs.get(key, want) != want:
                raise ValueError(f"{key}={kwargs[key]!r} is not supported (needs {want!r})")
        if hidden_act != "swish":
            raise ValueError(f"hidden_act={hidden_act!r} is not supported (needs 'swish')")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.statex_num_heads = _per_layer("statex_num_heads", statex_num_heads, num_heads, num_hidden_layers)
        self.num_heads = max(self.statex_num_heads)
        self.expand_k, self.expand_v = expand_k, expand_v
        self.hidden_ratio = hidden_ratio
        # fla's GatedMLP: 2/3 * hidden * ratio, rounded up to a multiple of 256
        self.intermediate_size = intermediate_size or _round_up(int(hidden_size * (hidden_ratio or 4) * 2 / 3), 256)
        self.use_short_conv, self.conv_size = use_short_conv, conv_size
        self.use_output_gate = use_output_gate
        self.clamp_min = clamp_min
        self.hidden_act = hidden_act
        self.norm_eps = norm_eps
        self.fuse_norm = fuse_norm
        self.gate_logit_normalizer = gate_logit_normalizer
        self.gate_low_rank_dim = gate_low_rank_dim
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        for i, h in enumerate(self.statex_num_heads):
            if h < 1 or self.key_dim % h or self.value_dim % h:
                raise ValueError(f"layer {i}: {h} heads must divide key dim {self.key_dim} and value dim "
                                 f"{self.value_dim}")
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    @property
    def key_dim(self) -> int:
        return round(self.hidden_size * self.expand_k)

    @property
    def value_dim(self) -> int:
        return round(self.hidden_size * self.expand_v)

    def layer_config(self, layer_idx: int) -> "StateXGLAConfig":
        return _with(self, num_heads=self.statex_num_heads[layer_idx])


# fla Gated DeltaNet options the model here does not implement, with the value they must have
_GDN_FIXED = {"attn": None, "attnres_block_size": None, "allow_neg_eigval": False, "use_l2warp": False,
              "hidden_act": "swish"}


class StateXGatedDeltaNetConfig(PreTrainedConfig):
    """fla's GatedDeltaNetConfig with ``statex_num_heads`` and ``statex_num_v_heads``: the key and value heads of
    each layer (``num_heads`` / ``num_v_heads``: those of the layer of the most heads).

    Key width K = num_heads * head_dim and value width V = num_v_heads * head_dim * expand_v are the same in
    every layer; a layer of H key heads and Hv value heads has heads of K / H x V / Hv.
    """

    model_type = "statex_gated_deltanet"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size: int = 32000, hidden_size: int = 2048, num_hidden_layers: int = 21,
                 num_heads: int = 6, num_v_heads=None, head_dim: int = 256, expand_v: float = 2.0,
                 statex_num_heads=None, statex_num_v_heads=None, hidden_ratio=4, intermediate_size=None,
                 use_gate: bool = True, use_short_conv: bool = True, conv_size: int = 4,
                 output_gate_activation: str = "swish", norm_eps: float = 1e-6, fuse_norm: bool = True,
                 initializer_range: float = 0.02, use_cache: bool = True, tie_word_embeddings: bool = False,
                 pad_token_id=None, bos_token_id=1, eos_token_id=2, **kwargs):
        for key, want in _GDN_FIXED.items():
            if kwargs.get(key, want) != want:
                raise ValueError(f"{key}={kwargs[key]!r} is not supported (needs {want!r})")
        if output_gate_activation not in ("swish", "silu"):
            raise ValueError(f"output_gate_activation={output_gate_activation!r} is not supported (needs 'swish')")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        num_v_heads = num_v_heads or num_heads
        self.key_dim = num_heads * head_dim
        self.value_dim = num_v_heads * int(head_dim * expand_v)
        self.statex_num_heads = _per_layer("statex_num_heads", statex_num_heads, num_heads, num_hidden_layers)
        self.statex_num_v_heads = _per_layer("statex_num_v_heads", statex_num_v_heads, num_v_heads,
                                             num_hidden_layers)
        self.num_heads, self.num_v_heads = num_heads, num_v_heads
        self.head_dim, self.expand_v = head_dim, expand_v
        self.hidden_ratio = hidden_ratio
        # fla's GatedMLP: 2/3 * hidden * ratio, rounded up to a multiple of 256
        self.intermediate_size = intermediate_size or _round_up(int(hidden_size * (hidden_ratio or 4) * 2 / 3), 256)
        self.use_gate, self.use_short_conv, self.conv_size = use_gate, use_short_conv, conv_size
        self.output_gate_activation = output_gate_activation
        self.hidden_act = "swish"
        self.norm_eps = norm_eps
        self.fuse_norm = fuse_norm
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        for i, (h, hv) in enumerate(zip(self.statex_num_heads, self.statex_num_v_heads)):
            if h < 1 or self.key_dim % h or hv % h or self.value_dim % hv:
                raise ValueError(f"layer {i}: {h} heads and {hv} value heads must divide key dim {self.key_dim} "
                                 f"and value dim {self.value_dim}, the value heads a multiple of the heads")
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)

    def layer_config(self, layer_idx: int) -> "StateXGatedDeltaNetConfig":
        h, hv = self.statex_num_heads[layer_idx], self.statex_num_v_heads[layer_idx]
        head_dim, head_v = self.key_dim // h, self.value_dim // hv
        expand_v = head_v / head_dim   # fla's layer builds int(head_dim * expand_v) channels: never below head_v
        if int(head_dim * expand_v) < head_v:
            expand_v = math.nextafter(expand_v, math.inf)
        return _with(self, num_heads=h, num_v_heads=hv, head_dim=head_dim, expand_v=expand_v)


@strict
class StateXMamba2Config(Mamba2Config):
    """transformers' Mamba2Config with ``statex_d_state``: the d_state of each layer (``state_size`` is
    their max).

    ``pad_vocab_size_multiple`` (from mamba_ssm sources): the embedding holds ``vocab_size`` rounded up
    to it; logits keep ``vocab_size`` columns.
    """

    model_type = "statex_mamba2"
    statex_d_state: list | None = None
    pad_vocab_size_multiple: int = 1

    def __post_init__(self, **kwargs):
        self.statex_d_state = _per_layer("statex_d_state", self.statex_d_state, self.state_size,
                                         self.num_hidden_layers)
        self.state_size = max(self.statex_d_state)
        self.time_step_limit = tuple(_float(x) for x in self.time_step_limit)
        super().__post_init__(**kwargs)

    @property
    def embedding_rows(self) -> int:
        return _round_up(self.vocab_size, self.pad_vocab_size_multiple or 1)

    def layer_config(self, layer_idx: int) -> "StateXMamba2Config":
        return _with(self, state_size=self.statex_d_state[layer_idx])

