"""Several shard folders read as one stream at fixed weights: Megatron-LM's blend, ``"0.7 data/a 0.3 data/b"``
(weights and folders alternating; the weights are normalised), given as ``data.train``.

Which folder serves blended sample ``i`` of a virtual reader is a fixed sequence (Webster's method):
folder ``d``'s ``k``-th sample arrives at time ``(k + 1/2) / w_d`` and the samples go out in order of arrival,
ties to the lower ``d``. After ``n`` samples folder ``d`` has served ``w_d * n`` of them, within one, at every
``n``; and the count at any ``n`` follows from the weights alone, so a resume skips arithmetic, not samples.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from statex_dist.data.errors import DataError
from statex_dist.data.format import Manifest, check_shards


@dataclass(frozen=True)
class Blend:
    spec: str
    manifests: tuple[Manifest, ...]
    weights: tuple[float, ...]      # normalised, summing to 1

    @property
    def seq_len(self) -> int:
        return self.manifests[0].seq_len

    @property
    def fingerprint(self) -> str:
        """One folder: its own (a position saved before blends existed stays valid); a blend: of all."""
        if len(self.manifests) == 1:
            return self.manifests[0].fingerprint
        rows = [[w, m.fingerprint] for w, m in zip(self.weights, self.manifests)]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def parse_blend(spec) -> list[tuple[float, str]]:
    """``"PATH"`` -> [(1.0, PATH)]; ``"W1 PATH1 W2 PATH2 ..."`` -> the pairs, weights as given."""
    text = str(spec or "")
    parts = text.split()
    if len(parts) <= 1 or text.startswith("pipe:"):
        return [(1.0, text)]
    if len(parts) % 2:
        raise DataError(f"data blend {text!r}: expected weights and folders alternating, 'W1 PATH1 W2 PATH2 ...'")
    out = []
    for w, path in zip(parts[::2], parts[1::2]):
        try:
            weight = float(w)
        except ValueError:
            raise DataError(f"data blend {text!r}: {w!r} is not a weight (a number > 0 before each folder)") from None
        if not weight > 0 or weight == float("inf"):
            raise DataError(f"data blend {text!r}: weight {w} of {path} must be a number > 0")
        out.append((weight, path))
    return out


def check_blend(spec, layout: bool = True) -> Blend:
    """Check every folder of a blend (``check_shards``) and that they can be mixed: the same ``seq_len``,
    tokenizer and loss-mask kind."""
    pairs = parse_blend(spec)
    manifests = tuple(check_shards(path, layout=layout) for _, path in pairs)
    first = manifests[0]
    for m in manifests[1:]:
        for what, a, b in (("seq_len", first.seq_len, m.seq_len),
                           ("tokenizer", first.raw["tokenizer"].get("fingerprint"), m.raw["tokenizer"].get("fingerprint")),
                           ("vocab_size", first.vocab_size, m.vocab_size), ("loss_mask", first.loss_mask, m.loss_mask)):
            if a != b:
                raise DataError(f"data blend: {m.dir} has {what} {b!r}, {first.dir} has {a!r}; a blend mixes "
                                f"folders made with the same tokenizer, seq_len and kind")
    total = sum(w for w, _ in pairs)
    return Blend(str(spec), manifests, tuple(w / total for w, _ in pairs))


def counts_before(weights, n: int) -> list[int]:
    """How many of the first ``n`` blended samples each folder serves."""
    if n <= 0:
        return [0] * len(weights)
    times, owners = [], []
    for d, w in enumerate(weights):
        k = np.arange(int(np.ceil(w * n)) + 2)
        times.append((k + 0.5) / w)
        owners.append(np.full(len(k), d))
    times, owners = np.concatenate(times), np.concatenate(owners)
    first = np.lexsort((owners, times))[:n]
    return np.bincount(owners[first], minlength=len(weights)).tolist()


class Chooser:
    """The folder of each blended sample from sample ``start`` on (the order of :func:`counts_before`)."""

    def __init__(self, weights, start: int):
        self.w = list(weights)
        self.k = counts_before(self.w, start)

    def next(self) -> int:
        d = min(range(len(self.w)), key=lambda j: ((self.k[j] + 0.5) / self.w[j], j))
        self.k[d] += 1
        return d
