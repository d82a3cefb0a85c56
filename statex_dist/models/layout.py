"""What every architecture's layout (``archs/<name>/layout.py``) shares: a causal LM's parameters are its
vocab-parallel embedding, each block's (``layers.i.`` + the block's own names), the final norm and, untied,
a vocab-parallel LM head."""
from __future__ import annotations

from typing import Callable

from statex_dist.parallel.sharding import ShardSpec


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
