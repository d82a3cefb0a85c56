"""Parallel sizes that cannot work fail here, before any process group waits on another.

The split rules are the layouts' (``archs/<name>/layout.py``): every block a ShardSpec splits over TP must
divide by it, checked by iterating the specs, so a rule changed there is checked here with no second copy.
What a spec cannot say is the architecture's ``tp_rule`` (Mamba2's heads and groups).
"""
from __future__ import annotations

from typing import Optional

from statex_dist import archs
from statex_dist.models.config import ModelConfig
from statex_dist.models.layout import specs_for

MAX_TP = 64  # the TP sizes listed as working in a message


def _split_blocks(config: ModelConfig, tp: int) -> Optional[tuple[str, int, int]]:
    """The first (tensor, block width, dim) of the layout at ``tp`` that TP does not divide, else None."""
    for name, spec in specs_for(config, tp).items():
        if spec.dim is None:
            continue
        for w in spec.parts or (spec.shape[spec.dim],):
            if w % tp:
                return name, w, spec.dim
    return None


def _rule(config: ModelConfig, tp: int) -> Optional[str]:
    rule = archs.of(config).tp_rule
    return rule(config, tp) if rule else None


def _works(config: ModelConfig, tp: int) -> bool:
    return _rule(config, tp) is None and _split_blocks(config, tp) is None


def check_parallel_sizes(config: ModelConfig, tp: int, pp: int = 1, world: Optional[int] = None) -> None:
    """Raise ValueError naming the constraint and the sizes that would work."""
    if tp < 1 or pp < 1:
        raise ValueError(f"TP={tp} and PP={pp} must be >= 1")
    if msg := _rule(config, tp):
        raise ValueError(msg)
    bad = _split_blocks(config, tp)
    if bad is not None:
        name, width, dim = bad
        ok = [t for t in range(1, MAX_TP + 1) if _works(config, t)]
        raise ValueError(f"TP={tp}: {name} has a block of width {width} along dim {dim} that TP splits and does "
                         f"not divide; TP sizes that work for this model: {ok}")
    if pp > config.num_layers:
        raise ValueError(f"PP={pp} is larger than the {config.num_layers} layers; PP must be <= {config.num_layers}")
    if world is not None and world % (tp * pp):
        ok = [(t, p) for t in range(1, world + 1) for p in range(1, world + 1) if world % (t * p) == 0]
        raise ValueError(f"world size {world} is not a multiple of TP x PP = {tp} x {pp}; "
                         f"(TP, PP) pairs that work: {ok[:12]}")
