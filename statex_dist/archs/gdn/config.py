"""Gated DeltaNet's model config: fla's GatedDeltaNetConfig fields under this project's names, with heads per
layer."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from statex_dist.models.config import ModelConfig, round_up

OUTPUT_GATE_ACTIVATIONS = ("swish", "silu")   # fla's aliases of one function; fla's 'sigmoid' is refused


@dataclass
class GDNConfig(ModelConfig):
    """fla's GatedDeltaNet stack (GatedDeltaNetForCausalLM), with heads per layer.

    Every layer has the same total key width ``key_dim`` (fla: ``num_heads * head_dim``) and value width
    ``value_dim`` (fla: ``num_v_heads * head_dim * expand_v``); layer i splits them into ``num_heads[i]`` key
    heads of ``key_dim / num_heads[i]`` and ``num_v_heads[i]`` value heads of ``value_dim / num_v_heads[i]``
    (a multiple of the key heads: grouped value attention, key head j serving value heads j*g .. (j+1)*g - 1
    with g = num_v_heads[i] / num_heads[i]). A StateX-merged layer has one key and one value head.
    """
    num_heads: list[int] = field(default_factory=list)
    num_v_heads: Optional[list[int]] = None   # None: as num_heads
    key_dim: int = 6 * 256      # fla's defaults: 6 heads of head_dim 256, expand_v 2
    value_dim: int = 6 * 512
    intermediate_size: Optional[int] = None
    hidden_ratio: int = 4
    use_gate: bool = True
    use_short_conv: bool = True
    conv_size: int = 4
    output_gate_activation: str = "swish"
    # fla's blocks use its fused RMSNorm (fuse_norm) or torch's; the same math, kept so an export writes the
    # source's config back
    fuse_norm: bool = True
    arch = "gdn"

    def __post_init__(self):
        if isinstance(self.num_heads, int):
            self.num_heads = [self.num_heads] * self.num_layers
        if self.num_v_heads is None:
            self.num_v_heads = list(self.num_heads)
        elif isinstance(self.num_v_heads, int):
            self.num_v_heads = [self.num_v_heads] * self.num_layers
        self._check_layers("num_heads", self.num_heads)
        self._check_layers("num_v_heads", self.num_v_heads)
        if self.intermediate_size is None:
            # fla's GatedMLP: 2/3 * hidden * ratio, rounded up to a multiple of 256
            self.intermediate_size = round_up(int(self.hidden_size * self.hidden_ratio * 2 / 3), 256)
        if self.output_gate_activation not in OUTPUT_GATE_ACTIVATIONS:
            raise ValueError(f"output_gate_activation={self.output_gate_activation!r} is not supported "
                             f"(needs one of {list(OUTPUT_GATE_ACTIVATIONS)})")
        for i, (h, hv) in enumerate(zip(self.num_heads, self.num_v_heads)):
            if h < 1 or self.key_dim % h:
                raise ValueError(f"layer {i}: {h} heads must divide key dim {self.key_dim}")
            if hv < h or hv % h or self.value_dim % hv:
                raise ValueError(f"layer {i}: {hv} value heads must be a multiple of its {h} heads and divide "
                                 f"value dim {self.value_dim}")

    def head_k_dim(self, layer: int) -> int:
        return self.key_dim // self.num_heads[layer]

    def head_v_dim(self, layer: int) -> int:
        return self.value_dim // self.num_v_heads[layer]

    def state_size(self, layer: int) -> int:
        """Recurrent state floats of one layer for one sequence: value heads x d_k x d_v."""
        return self.num_v_heads[layer] * self.head_k_dim(layer) * self.head_v_dim(layer)
