"""Forward FLOPs per token of one Mamba2 block (statex_dist.training.flops says what counts)."""
from __future__ import annotations

from statex_dist.archs.mamba2.config import Mamba2Config


def layer_flops(cfg: Mamba2Config, layer: int) -> int:
    D, E, G, N, H = cfg.hidden_size, cfg.d_inner, cfg.ngroups, cfg.d_state[layer], cfg.nheads
    weights = D * (2 * E + 2 * G * N + H) + E * D  # in_proj [z | xBC | dt], out_proj
    conv = cfg.d_conv * (E + 2 * G * N)
    return 2 * weights + 2 * conv + 4 * cfg.state_size(layer)
