"""Which layers a StateX expansion enlarges."""
from __future__ import annotations

from typing import Iterable, Optional

DEFAULT_EVERY = 6  # StateX's choice: layers 0, 6, 12, 18 of 24


def _divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def choose_layers(num_layers: int, every: Optional[int] = None,
                  layers: Optional[Iterable[int]] = None) -> list[int]:
    """The sorted layer indices to expand.

    ``every=K`` gives 0, K, 2K, ... (K must divide ``num_layers``); ``layers`` is an explicit list,
    checked to be in range and free of duplicates. With neither, K = 6. Raises ValueError.
    """
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    if every is not None and layers is not None:
        raise ValueError("give either every=K or an explicit layers list, not both")
    if layers is not None:
        chosen = list(layers)
        if not chosen:
            raise ValueError("the layers list is empty: choose at least one layer to expand")
        bad = [i for i in chosen if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"layers {bad} are out of range: the model has layers 0..{num_layers - 1}")
        dup = sorted({i for i in chosen if chosen.count(i) > 1})
        if dup:
            raise ValueError(f"layers {dup} are listed more than once")
        return sorted(chosen)
    k = DEFAULT_EVERY if every is None else every
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or num_layers % k:
        raise ValueError(f"every={k} does not divide {num_layers} layers; "
                         f"sizes that work: {_divisors(num_layers)}")
    return list(range(0, num_layers, k))
