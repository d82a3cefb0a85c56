"""GLA's model config: fla's GLAConfig fields under this project's names, with heads per layer."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from statex_dist.models.config import ModelConfig, round_up


@dataclass
class GLAConfig(ModelConfig):
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
            self.intermediate_size = round_up(int(self.hidden_size * self.hidden_ratio * 2 / 3), 256)
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
