"""Forward FLOPs per token of one Mamba2 block (statex_dist.training.flops says what counts)."""
from __future__ import annotations

from statex_dist.archs.mamba2.config import Mamba2Config


def layer_flops(config: Mamba2Config, layer: int) -> int:
    D, E, G, N, H = config.hidden_size, config.d_inner, config.ngroups, config.d_state[layer], config.nheads
    weights = D * (2 * E + 2 * G * N + H) + E * D  # in_proj [z | xBC | dt], out_proj
    conv = config.d_conv * (E + 2 * G * N)
    return 2 * weights + 2 * conv + 4 * config.state_size(layer)
