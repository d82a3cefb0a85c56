"""Forward FLOPs per token of one GLA block (statex_dist.training.flops says what counts)."""
from __future__ import annotations

from statex_dist.archs.gla.config import GLAConfig


def layer_flops(config: GLAConfig, layer: int) -> int:
    D, K, V = config.hidden_size, config.key_dim, config.value_dim
    r, I = config.gate_low_rank_dim, config.intermediate_size
    weights = D * K * 2 + D * V + V * D + D * r + r * K + 3 * D * I  # q, k, v, o, gate (low rank), MLP
    if config.use_output_gate:
        weights += D * V
    conv = config.conv_size * (2 * K + V) if config.use_short_conv else 0
    return 2 * weights + 2 * conv + 4 * config.state_size(layer)
