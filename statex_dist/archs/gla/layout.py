"""Every GLA parameter's full shape and tensor-parallel layout, from the config alone.

Read by the model (to build its local shards), the checkpoint loader, the resharder and the exporter;
free of megatron-core and DeepSpeed so the streaming tools start fast.
"""
from __future__ import annotations

from statex_dist.archs.gla.config import GLAConfig
from statex_dist.models.layout import causal_lm_specs, fla_block_specs, short_conv_specs
from statex_dist.parallel.sharding import ShardSpec

EMBEDDING, NORM = "embeddings", "norm"   # fla's names of the embedding and the final norm


def tp_mode(heads: int, tp: int) -> str:
    """'heads' when the layer's heads split over TP; else 'values': every rank holds all heads but a
    slice of each head's value channels (the state d_k x d_v splits by columns, which need the full q,
    k and gate). The 1-head layers StateX makes are always value-sharded at TP > 1."""
    return "heads" if heads % tp == 0 else "values"


def attn_specs(config: GLAConfig, layer: int, tp: int) -> dict[str, ShardSpec]:
    D, K, V = config.hidden_size, config.key_dim, config.value_dim
    H, r = config.num_heads[layer], config.gate_low_rank_dim
    dv, W = V // H, config.conv_size
    rep = dict(grad_reduce=True, layer=layer)
    if tp_mode(H, tp) == "heads":
        qk = dict(dim=0, layer=layer)
        val = dict(dim=0, layer=layer)
        out = dict(dim=1, layer=layer)
        norm = ShardSpec((dv,), **rep)
    else:
        qk = rep
        val = dict(dim=0, parts=(dv,) * H, layer=layer)
        out = dict(dim=1, parts=(dv,) * H, layer=layer)
        norm = ShardSpec((dv,), dim=0, layer=layer)
    specs = {
        "q_proj.weight": ShardSpec((K, D), **qk), "k_proj.weight": ShardSpec((K, D), **qk),
        "v_proj.weight": ShardSpec((V, D), **val),
        # its consumer (gk_proj.1) returns full gradients in both modes, so it is a plain replica
        "gk_proj.0.weight": ShardSpec((r, D), layer=layer),
        "gk_proj.1.weight": ShardSpec((K, r), **qk), "gk_proj.1.bias": ShardSpec((K,), **qk),
        "o_proj.weight": ShardSpec((D, V), **out), "g_norm.weight": norm,
    }
    if config.use_output_gate:
        specs["g_proj.weight"] = ShardSpec((V, D), **val)
    if config.use_short_conv:
        specs.update(short_conv_specs(K, V, W, qk, val))
    return specs


def block_specs(config: GLAConfig, layer: int, tp: int) -> dict[str, ShardSpec]:
    """The specs of block ``layer`` under its own names (``attn.q_proj.weight``, ``mlp_norm.weight``, ...)."""
    return fla_block_specs(config, layer, attn_specs(config, layer, tp))


def param_specs(config: GLAConfig, tp: int = 1) -> dict[str, ShardSpec]:
    """Every parameter's full shape and TP layout, from the config alone (no model is built)."""
    return causal_lm_specs(config, tp, EMBEDDING, NORM, block_specs)
