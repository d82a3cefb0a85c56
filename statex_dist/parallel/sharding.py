"""How each parameter is laid out across tensor-parallel ranks, written once.

The parallel models, the checkpoint loader, the resharder and the Hugging Face exporter all read these
specs (``statex_dist.models.*.param_specs``) instead of keeping their own tables of split dimensions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch


@dataclass(frozen=True)
class ShardSpec:
    """Layout of one parameter.

    Attributes:
        shape: full (unsharded) shape, the vocab already padded for this TP size.
        dim: the dimension TP splits; ``None`` means every rank holds the whole tensor.
        parts: widths of packed blocks along ``dim`` that split separately (Mamba2's in_proj is
            [z | x | B | C | dt]); ``None`` means one block.
        whole_parts: indices of ``parts`` every rank keeps whole (Mamba2's B and C when ngroups does not
            divide by TP); their gradients are summed over the TP group.
        grad_reduce: a replicated tensor whose gradient each rank computes only partly (from its own
            heads or channels), so it is summed over the TP group after backward.
        layer: index of the owning layer; ``None`` for embedding, final norm and LM head.
    """
    shape: tuple[int, ...]
    dim: Optional[int] = None
    parts: Optional[tuple[int, ...]] = None
    whole_parts: tuple[int, ...] = ()
    grad_reduce: bool = False
    layer: Optional[int] = None

    def _parts(self) -> tuple[int, ...]:
        return self.parts if self.parts is not None else (self.shape[self.dim],)

    def _check(self, tp: int, name: str = "tensor") -> None:
        for i, w in enumerate(self._parts()):
            if i not in self.whole_parts and w % tp:
                raise ValueError(
                    f"{name}: block {i} of width {w} along dim {self.dim} does not split over TP={tp}; "
                    f"use a TP size that divides {w}")

    def local_shape(self, tp: int) -> tuple[int, ...]:
        if self.dim is None or tp == 1:
            return self.shape
        self._check(tp)
        width = sum(w if i in self.whole_parts else w // tp for i, w in enumerate(self._parts()))
        shape = list(self.shape)
        shape[self.dim] = width
        return tuple(shape)

    def shard_pieces(self, full: torch.Tensor, rank: int, tp: int, name: str = "tensor") -> list[torch.Tensor]:
        """This rank's slice as views whose concatenation along ``dim`` is :meth:`shard` (nothing copied)."""
        if tuple(full.shape) != self.shape:
            raise ValueError(f"{name}: expected shape {list(self.shape)}, found {list(full.shape)}")
        if self.dim is None or tp == 1:
            return [full]
        self._check(tp, name)
        pieces, start = [], 0
        for i, w in enumerate(self._parts()):
            if i in self.whole_parts:
                pieces.append(full.narrow(self.dim, start, w))
            else:
                pieces.append(full.narrow(self.dim, start + rank * (w // tp), w // tp))
            start += w
        return pieces

    def shard(self, full: torch.Tensor, rank: int, tp: int, name: str = "tensor") -> torch.Tensor:
        """This rank's slice of ``full`` (a view where possible)."""
        pieces = self.shard_pieces(full, rank, tp, name)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=self.dim)

    def unshard(self, shards: Sequence[torch.Tensor], name: str = "tensor") -> torch.Tensor:
        """The full tensor from every rank's slice, in rank order."""
        tp = len(shards)
        if self.dim is None or tp == 1:
            return shards[0]
        self._check(tp, name)
        local = [sum(w if i in self.whole_parts else w // tp for i, w in enumerate(self._parts()))]
        out, offset = [], 0
        for i, w in enumerate(self._parts()):
            lw = w if i in self.whole_parts else w // tp
            if i in self.whole_parts:
                out.append(shards[0].narrow(self.dim, offset, lw))
            else:
                out.extend(s.narrow(self.dim, offset, lw) for s in shards)
            offset += lw
        assert offset == local[0]
        return torch.cat(out, dim=self.dim)


def split(width: int, layer: Optional[int] = None, ndim: int = 2, other: int = 0, dim: int = 0) -> ShardSpec:
    """Shorthand for a tensor split evenly along ``dim``."""
    shape = [other] * ndim
    shape[dim] = width
    return ShardSpec(tuple(shape), dim=dim, layer=layer)
