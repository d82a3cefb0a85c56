"""Every Gated DeltaNet parameter's full shape and tensor-parallel layout, from the config alone.

Read by the model (to build its local shards), the checkpoint loader, the resharder and the exporter;
free of megatron-core and DeepSpeed so the streaming tools start fast.
"""
from __future__ import annotations

from statex_dist.archs.gdn.config import GDNConfig
from statex_dist.models.layout import causal_lm_specs, fla_block_specs, short_conv_specs
from statex_dist.parallel.sharding import ShardSpec

EMBEDDING, NORM = "embeddings", "norm"   # fla's names of the embedding and the final norm


def tp_mode(heads: int, tp: int) -> str:
    """'heads' when the layer's key heads split over TP (its value heads, a multiple of them, follow: a
    rank holds key heads j and the value heads they serve); else 'values': every rank holds all heads but a
    slice of each value head's channels (the delta rule's state d_k x d_v splits by columns: each column
    updates from the full k, q, decay and write strength, and from its own value channel). The 1-head
    layers StateX makes are always value-sharded at TP > 1."""
    return "heads" if heads % tp == 0 else "values"


def attn_specs(config: GDNConfig, layer: int, tp: int) -> dict[str, ShardSpec]:
    """fla's ``GatedDeltaNet`` parameters of layer ``layer`` (``q_proj.weight``, ``A_log``, ...).

    Shapes: D hidden, K key dim, V value dim, Hv value heads, dv = V / Hv, W conv width. Per value head:
    a_proj / b_proj rows, A_log, dt_bias; per value channel: v_proj / g_proj rows, v conv, o_proj columns.
    """
    D, K, V, Hv, W = config.hidden_size, config.key_dim, config.value_dim, config.num_v_heads[layer], config.conv_size
    dv = config.head_v_dim(layer)
    rep = dict(grad_reduce=True, layer=layer)
    if tp_mode(config.num_heads[layer], tp) == "heads":
        qk = per_head = dict(dim=0, layer=layer)
        val = dict(dim=0, layer=layer)
        out = dict(dim=1, layer=layer)
        norm = ShardSpec((dv,), **rep)
    else:
        # q, k, the decay and the write strength are computed whole on every rank, each rank's gradient
        # from its own value channels only
        qk = per_head = rep
        val = dict(dim=0, parts=(dv,) * Hv, layer=layer)
        out = dict(dim=1, parts=(dv,) * Hv, layer=layer)
        norm = ShardSpec((dv,), dim=0, layer=layer)
    specs = {
        "q_proj.weight": ShardSpec((K, D), **qk), "k_proj.weight": ShardSpec((K, D), **qk),
        "v_proj.weight": ShardSpec((V, D), **val),
        "a_proj.weight": ShardSpec((Hv, D), **per_head), "b_proj.weight": ShardSpec((Hv, D), **per_head),
        "A_log": ShardSpec((Hv,), **per_head), "dt_bias": ShardSpec((Hv,), **per_head),
        "o_norm.weight": norm, "o_proj.weight": ShardSpec((D, V), **out),
    }
    if config.use_gate:
        specs["g_proj.weight"] = ShardSpec((V, D), **val)
    if config.use_short_conv:
        specs.update(short_conv_specs(K, V, W, qk, val))
    return specs


def block_specs(config: GDNConfig, layer: int, tp: int) -> dict[str, ShardSpec]:
    """The specs of block ``layer`` under its own names (``attn.q_proj.weight``, ``mlp_norm.weight``, ...)."""
    return fla_block_specs(config, layer, attn_specs(config, layer, tp))


def param_specs(config: GDNConfig, tp: int = 1) -> dict[str, ShardSpec]:
    """Every parameter's full shape and TP layout, from the config alone (no model is built)."""
    return causal_lm_specs(config, tp, EMBEDDING, NORM, block_specs)
