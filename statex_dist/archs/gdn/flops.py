"""Forward FLOPs per token of one Gated DeltaNet block (statex_dist.training.flops says what counts)."""
from __future__ import annotations

from statex_dist.archs.gdn.config import GDNConfig


def layer_flops(cfg: GDNConfig, layer: int) -> int:
    D, K, V, Hv, I = cfg.hidden_size, cfg.key_dim, cfg.value_dim, cfg.num_v_heads[layer], cfg.intermediate_size
    weights = D * K * 2 + D * V + V * D + 2 * D * Hv + 3 * D * I  # q, k, v, o, a and b, MLP
    if cfg.use_gate:
        weights += D * V
    conv = cfg.conv_size * (2 * K + V) if cfg.use_short_conv else 0
    # the delta rule reads the state twice (k^T S, then q^T S) and writes it once (decay and rank-1 update):
    # 2 FLOPs per state entry each
    return 2 * weights + 2 * conv + 6 * cfg.state_size(layer)
