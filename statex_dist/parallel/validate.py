"""Parallel sizes that cannot work fail here, before any process group waits on another."""
from __future__ import annotations

from typing import Optional

from statex_dist.config import ModelConfig


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_parallel_sizes(config: ModelConfig, tp: int, pp: int = 1, world: Optional[int] = None) -> None:
    """Raise ValueError naming the constraint and the sizes that would work."""
    if tp < 1 or pp < 1:
        raise ValueError(f"TP={tp} and PP={pp} must be >= 1")
    if config.arch == "gla":
        for name, width in (("key dim", config.key_dim), ("value dim", config.value_dim),
                            ("MLP width", config.intermediate_size)):
            if width % tp:
                raise ValueError(f"TP={tp}: the GLA {name} {width} does not split over it; TP must divide {width}: "
                                 f"{_divisors(width)}")
        for i, h in enumerate(config.num_heads):
            if h % tp and (config.value_dim // h) % tp:
                raise ValueError(f"TP={tp}: GLA layer {i} has {h} heads of value width {config.value_dim // h}; "
                                 f"TP must divide the heads or the value width: "
                                 f"{sorted(set(_divisors(h)) | set(_divisors(config.value_dim // h)))}")
    else:
        h, g = config.nheads, config.ngroups
        if h % tp:
            raise ValueError(f"TP={tp}: Mamba2 has {h} heads (d_inner {config.d_inner} / headdim {config.headdim}); "
                             f"TP must divide the heads: {_divisors(h)}")
        if g % tp and tp % g:
            ok = [t for t in _divisors(h) if g % t == 0 or t % g == 0]
            raise ValueError(f"TP={tp}: ngroups {g} and TP must divide one another; TP sizes that work: {ok}")
    if pp > config.num_layers:
        raise ValueError(f"PP={pp} is larger than the {config.num_layers} layers; PP must be <= {config.num_layers}")
    if world is not None and world % (tp * pp):
        ok = [(t, p) for t in range(1, world + 1) for p in range(1, world + 1) if world % (t * p) == 0]
        raise ValueError(f"world size {world} is not a multiple of TP x PP = {tp} x {pp}; "
                         f"(TP, PP) pairs that work: {ok[:12]}")
