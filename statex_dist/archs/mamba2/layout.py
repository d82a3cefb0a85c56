"""Every Mamba2 parameter's full shape and tensor-parallel layout, from the config alone.

Read by the model (to build its local shards), the checkpoint loader, the resharder and the exporter;
free of megatron-core and DeepSpeed so the streaming tools start fast.
"""
from __future__ import annotations

from typing import Optional

from statex_dist.archs.mamba2.config import Mamba2Config
from statex_dist.models.layout import causal_lm_specs
from statex_dist.parallel.sharding import ShardSpec

EMBEDDING, NORM = "embedding", "norm_f"   # mamba_ssm's names of the embedding and the final norm


def mixer_specs(config: Mamba2Config, layer: int, tp: int) -> dict[str, ShardSpec]:
    E, G, N = config.d_inner, config.ngroups, config.d_state[layer]
    Hh, W, D = config.nheads, config.d_conv, config.hidden_size
    # Every block splits evenly over TP. When the groups divide over TP a rank's B/C rows are its own
    # groups; otherwise (ngroups=1, every public checkpoint; Megatron-LM refuses this case) a rank computes
    # a slice of the B/C channels and the model all-gathers them, so the model stays exactly a G-group
    # model with no tensor held twice (a replicated block inside a split tensor would be counted TP times
    # by DeepSpeed's gradient-norm clipping).
    heads = ShardSpec((Hh,), dim=0, layer=layer)
    return {
        "in_proj.weight": ShardSpec((2 * E + 2 * G * N + Hh, D), dim=0, parts=(E, E, G * N, G * N, Hh),
                                    layer=layer),
        "conv1d.weight": ShardSpec((E + 2 * G * N, 1, W), dim=0, parts=(E, G * N, G * N), layer=layer),
        "conv1d.bias": ShardSpec((E + 2 * G * N,), dim=0, parts=(E, G * N, G * N), layer=layer),
        "dt_bias": heads, "A_log": heads, "D": heads,
        "norm.weight": ShardSpec((E,), dim=0, layer=layer),
        "out_proj.weight": ShardSpec((D, E), dim=1, layer=layer),
    }


def param_specs(config: Mamba2Config, tp: int = 1) -> dict[str, ShardSpec]:
    """Every parameter's full shape and TP layout, from the config alone (no model is built)."""
    return causal_lm_specs(config, tp, EMBEDDING, NORM, block_specs)


def block_specs(config: Mamba2Config, layer: int, tp: int) -> dict[str, ShardSpec]:
    """The specs of block ``layer`` under its own names (``norm.weight``, ``mixer.in_proj.weight``, ...)."""
    return {"norm.weight": ShardSpec((config.hidden_size,), layer=layer),
            **{"mixer." + k: v for k, v in mixer_specs(config, layer, tp).items()}}


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def tp_rule(config: Mamba2Config, tp: int) -> Optional[str]:
    """Why ``tp`` cannot work beyond what the specs say (statex_dist.models.validate), else None: the heads
    are the unit of the per-head tensors, and the groups must divide TP or be divided by it (a rank's B/C
    channels then come from one group, or whole groups)."""
    h, g = config.nheads, config.ngroups
    if h % tp:
        return (f"TP={tp}: Mamba2 has {h} heads (d_inner {config.d_inner} / headdim {config.headdim}); TP must "
                f"divide the heads: {_divisors(h)}")
    if g % tp and tp % g:
        ok = [t for t in _divisors(h) if g % t == 0 or t % g == 0]
        return f"TP={tp}: ngroups {g} and TP must divide one another; TP sizes that work: {ok}"
    return None
