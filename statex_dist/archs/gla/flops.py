"""Forward FLOPs per token of one GLA block (statex_dist.training.flops says what counts)."""
from __future__ import annotations

from statex_dist.archs.gla.config import GLAConfig


def layer_flops(cfg: GLAConfig, layer: int) -> int:
    D, K, V, r, I = cfg.hidden_size, cfg.key_dim, cfg.value_dim, cfg.gate_low_rank_dim, cfg.intermediate_size
    weights = D * K * 2 + D * V + V * D + D * r + r * K + 3 * D * I  # q, k, v, o, gate (low rank), MLP
    if cfg.use_output_gate:
        weights += D * V
    conv = cfg.conv_size * (2 * K + V) if cfg.use_short_conv else 0
    return 2 * weights + 2 * conv + 4 * cfg.state_size(layer)
