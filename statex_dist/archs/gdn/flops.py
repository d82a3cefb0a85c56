"""Forward FLOPs per token of one Gated DeltaNet block (statex_dist.training.flops says what counts)."""
from __future__ import annotations

from statex_dist.archs.gdn.config import GDNConfig


def layer_flops(config: GDNConfig, layer: int) -> int:
    D, K, V = config.hidden_size, config.key_dim, config.value_dim
    Hv, I = config.num_v_heads[layer], config.intermediate_size
    weights = D * K * 2 + D * V + V * D + 2 * D * Hv + 3 * D * I  # q, k, v, o, a and b, MLP
    if config.use_gate:
        weights += D * V
    conv = config.conv_size * (2 * K + V) if config.use_short_conv else 0
    # the delta rule reads the state twice (k^T S, then q^T S) and writes it once (decay and rank-1 update):
    # 2 FLOPs per state entry each
    return 2 * weights + 2 * conv + 6 * config.state_size(layer)
