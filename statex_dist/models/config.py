"""Model configurations. Every per-layer quantity (GLA heads, Mamba2 d_state) is a list, because a
StateX model differs from layer to layer; the rest is shared by all layers.

Field names follow this project; the checkpoint readers in ``statex_dist.checkpoint`` map the
names of fla's GLAConfig, mamba_ssm's config.json and transformers' Mamba2Config onto them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass
class _Common:
    vocab_size: int
    hidden_size: int
    num_layers: int
    tie_word_embeddings: bool = False
    # The checkpoint stores the embedding padded to this multiple (mamba_ssm pads to 16). Logits returned
    # to callers always have ``vocab_size`` columns.
    pad_vocab_multiple: int = 1
    norm_eps: float = 1e-6
    # Which layers a StateX expansion enlarged; informational (the per-layer lists carry the shapes).
    expanded_layers: list[int] = field(default_factory=list)

    def checkpoint_vocab_size(self) -> int:
        """Rows of the embedding as stored in the Hugging Face checkpoint."""
        return _round_up(self.vocab_size, self.pad_vocab_multiple)

    def padded_vocab_size(self, tp: int = 1) -> int:
        """Rows of the in-memory embedding: the checkpoint's padding, then a multiple of TP."""
        return _round_up(self.vocab_size, math.lcm(self.pad_vocab_multiple, tp))

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, **dataclasses.asdict(self)}

    def _check_layers(self, name: str, values: list) -> None:
        if len(values) != self.num_layers:
            raise ValueError(f"{name} has {len(values)} entries but the model has {self.num_layers} layers")


@dataclass
class GLAConfig(_Common):
    """fla's GatedLinearAttention stack (GLAForCausalLM), with heads per layer."""
    num_heads: list[int] = field(default_factory=list)
    expand_k: float = 0.5
    expand_v: float = 1.0
    intermediate_size: Optional[int] = None
    hidden_ratio: int = 4
    use_short_conv: bool = False
    conv_size: int = 4
    use_output_gate: bool = True
    gate_logit_normalizer: float = 16.0
    gate_low_rank_dim: int = 16
    clamp_min: Optional[float] = None
    # fla names the output norm ``g_norm_swish_gate`` when fused (its default) and ``g_norm`` otherwise;
    # kept so an export writes the names the source had.
    fuse_norm: bool = True
    arch = "gla"

    def __post_init__(self):
        if isinstance(self.num_heads, int):
            self.num_heads = [self.num_heads] * self.num_layers
        self._check_layers("num_heads", self.num_heads)
        if self.intermediate_size is None:
            # fla's GatedMLP: 2/3 * hidden * ratio, rounded up to a multiple of 256
            self.intermediate_size = _round_up(int(self.hidden_size * self.hidden_ratio * 2 / 3), 256)
        for name, ratio in (("expand_k", self.expand_k), ("expand_v", self.expand_v)):
            if not math.isclose(self.hidden_size * ratio, round(self.hidden_size * ratio)):
                raise ValueError(f"hidden_size * {name} = {self.hidden_size * ratio} must be an integer")
        for i, h in enumerate(self.num_heads):
            if h < 1 or self.key_dim % h or self.value_dim % h:
                raise ValueError(
                    f"layer {i}: {h} heads must divide key dim {self.key_dim} and value dim {self.value_dim}")

    @property
    def key_dim(self) -> int:
        return round(self.hidden_size * self.expand_k)

    @property
    def value_dim(self) -> int:
        return round(self.hidden_size * self.expand_v)

    def state_size(self, layer: int) -> int:
        """Recurrent state floats of one layer for one sequence: heads x (d_k/H) x (d_v/H)."""
        h = self.num_heads[layer]
        return h * (self.key_dim // h) * (self.value_dim // h)

    @property
    def kernel_ops(self) -> tuple[str, ...]:
        """The ops of ``statex_dist.ops`` this model calls (a run resolves their kernels before starting)."""
        return ("gla", "conv1d") if self.use_short_conv else ("gla",)


@dataclass
class Mamba2Config(_Common):
    """mamba_ssm's Mamba2 stack (MambaLMHeadModel with Mamba2 mixers and no MLP), with d_state per layer."""
    d_state: list[int] = field(default_factory=list)
    expand: int = 2
    headdim: int = 64
    ngroups: int = 1
    d_conv: int = 4
    chunk_size: int = 256
    conv_bias: bool = True
    bias: bool = False
    residual_in_fp32: bool = True
    dt_limit: tuple[float, float] = (0.0, float("inf"))
    arch = "mamba2"

    def __post_init__(self):
        if isinstance(self.d_state, int):
            self.d_state = [self.d_state] * self.num_layers
        self._check_layers("d_state", self.d_state)
        self.dt_limit = tuple(float(x) for x in self.dt_limit)
        if self.d_inner % self.headdim:
            raise ValueError(f"d_inner {self.d_inner} (expand x hidden) must be a multiple of headdim {self.headdim}")
        if self.nheads % self.ngroups:
            raise ValueError(f"{self.nheads} heads must be a multiple of ngroups {self.ngroups}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.hidden_size

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim

    def state_size(self, layer: int) -> int:
        """Recurrent state floats of one layer for one sequence: d_inner x d_state."""
        return self.d_inner * self.d_state[layer]

    @property
    def kernel_ops(self) -> tuple[str, ...]:
        """The ops of ``statex_dist.ops`` this model calls (a run resolves their kernels before starting)."""
        return ("ssd", "conv1d")


ModelConfig = Union[GLAConfig, Mamba2Config]


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    d = dict(d)
    arch = d.pop("arch", None)
    cls = {"gla": GLAConfig, "mamba2": Mamba2Config}.get(arch)
    if cls is None:
        raise ValueError(f"unknown architecture {arch!r}: expected 'gla' or 'mamba2'")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {arch} config keys {unknown}; known: {sorted(names)}")
    return cls(**d)
