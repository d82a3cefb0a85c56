"""What every architecture's layout (``archs/<name>/layout.py``) shares: a causal LM's parameters are its
vocab-parallel embedding, each block's (``layers.i.`` + the block's own names), the final norm and, untied,
a vocab-parallel LM head."""
from __future__ import annotations

from typing import Callable

from statex_dist import archs
from statex_dist.parallel.sharding import ShardSpec


def specs_for(config, tp: int = 1) -> dict[str, ShardSpec]:
    """Every parameter's ShardSpec for ``config`` at this TP size (see statex_dist.parallel.sharding)."""
    return archs.of(config).param_specs(config, tp)


def causal_lm_specs(config, tp: int, embedding: str, norm: str,
                    block_specs: Callable[[object, int, int], dict[str, ShardSpec]]) -> dict[str, ShardSpec]:
    """Every parameter's spec: ``embedding`` / ``norm`` name the architecture's embedding and final norm
    modules; the vocabulary rows are padded for ``tp`` (``config.padded_vocab_size``)."""
    D, padded = config.hidden_size, config.padded_vocab_size(tp)
    vocab = ShardSpec((padded, D), dim=0, vocab_rows=config.checkpoint_vocab_size())
    specs = {f"{embedding}.weight": vocab, f"{norm}.weight": ShardSpec((D,))}
    if not config.tie_word_embeddings:
        specs["lm_head.weight"] = vocab
    for i in range(config.num_layers):
        specs.update({f"layers.{i}.{k}": v for k, v in block_specs(config, i, tp).items()})
    return specs


def fla_block_specs(config, layer: int, attn: dict[str, ShardSpec]) -> dict[str, ShardSpec]:
    """The specs of one of fla's pre-norm blocks under its own names: ``attn_norm``, the token mixer ``attn``
    (``attn``: its specs under its own names, ``q_proj.weight``, ...), ``mlp_norm`` and the SwiGLU ``mlp``
    (gate / up split by rows, down by columns)."""
    D, I = config.hidden_size, config.intermediate_size
    specs = {"attn." + k: v for k, v in attn.items()}
    specs.update({
        "attn_norm.weight": ShardSpec((D,), layer=layer),
        "mlp_norm.weight": ShardSpec((D,), layer=layer),
        "mlp.gate_proj.weight": ShardSpec((I, D), dim=0, layer=layer),
        "mlp.up_proj.weight": ShardSpec((I, D), dim=0, layer=layer),
        "mlp.down_proj.weight": ShardSpec((D, I), dim=1, layer=layer),
    })
    return specs


def short_conv_specs(key_dim: int, value_dim: int, width: int, qk: dict, val: dict) -> dict[str, ShardSpec]:
    """fla's q/k/v ShortConvolution weights [C, 1, W], each split like the projection feeding it (``qk``,
    ``val``: the ShardSpec keywords of the q/k and the v projections)."""
    return {"q_conv1d.weight": ShardSpec((key_dim, 1, width), **qk),
            "k_conv1d.weight": ShardSpec((key_dim, 1, width), **qk),
            "v_conv1d.weight": ShardSpec((value_dim, 1, width), **val)}
