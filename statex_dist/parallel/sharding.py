"""How each parameter is laid out across tensor-parallel ranks, written once.

The parallel models, the checkpoint loader, the resharder and the Hugging Face exporter all read these
specs (each architecture's ``param_specs``, statex_dist/archs/<name>/layout.py) instead of keeping their
own tables of split dimensions.
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
        grad_reduce: a replicated tensor whose gradient each rank computes only partly (from its own
            heads or channels), so it is summed over the TP group after backward.
        layer: index of the owning layer; ``None`` for embedding, final norm and LM head.
        vocab_rows: for a tensor whose rows are the vocabulary (the embedding, an untied LM head), the rows
            a checkpoint stores (``shape[0]`` is that padded for TP); ``None`` for every other tensor.
    """
    shape: tuple[int, ...]
    dim: Optional[int] = None
    parts: Optional[tuple[int, ...]] = None
    grad_reduce: bool = False
    layer: Optional[int] = None
    vocab_rows: Optional[int] = None

    @property
    def checkpoint_shape(self) -> tuple[int, ...]:
        """The shape checkpoint files store: the full shape without the vocabulary's TP padding."""
        return self.shape if self.vocab_rows is None else (self.vocab_rows,) + tuple(self.shape[1:])

    def unpad_rows(self, full: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`pad_rows`: a full tensor at its checkpoint shape."""
        return full if self.vocab_rows is None else full[: self.vocab_rows]

    def _parts(self) -> tuple[int, ...]:
        return self.parts if self.parts is not None else (self.shape[self.dim],)

    def _check(self, tp: int, name: str = "tensor") -> None:
        for i, w in enumerate(self._parts()):
            if w % tp:
                raise ValueError(
                    f"{name}: block {i} of width {w} along dim {self.dim} does not split over TP={tp}; "
                    f"use a TP size that divides {w}")

    def local_shape(self, tp: int) -> tuple[int, ...]:
        if self.dim is None or tp == 1:
            return self.shape
        self._check(tp)
        width = sum(w // tp for w in self._parts())
        shape = list(self.shape)
        shape[self.dim] = width
        return tuple(shape)

    def local_parts(self, tp: int) -> tuple[int, ...]:
        """Each packed block's width on one rank along ``dim`` (one block when ``parts`` is None)."""
        self._check(tp)
        return tuple(w // tp for w in self._parts())

    def pad_rows(self, full: torch.Tensor) -> torch.Tensor:
        """``full`` with zero rows appended up to this spec's dim 0: a vocabulary tensor as checkpoints store
        it [V, ...] -> its TP-padded shape [V_pad, ...] (unchanged when already there)."""
        short = self.shape[0] - full.shape[0]
        return torch.cat([full, full.new_zeros((short,) + tuple(full.shape[1:]))]) if short > 0 else full

    def shard_pieces(self, full: torch.Tensor, rank: int, tp: int, name: str = "tensor") -> list[torch.Tensor]:
        """This rank's slice as views whose concatenation along ``dim`` is :meth:`shard` (nothing copied)."""
        if tuple(full.shape) != self.shape:
            raise ValueError(f"{name}: expected shape {list(self.shape)}, found {list(full.shape)}")
        if self.dim is None or tp == 1:
            return [full]
        self._check(tp, name)
        pieces, start = [], 0
        for w in self._parts():
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
        out, offset = [], 0
        for w in self._parts():
            out.extend(s.narrow(self.dim, offset, w // tp) for s in shards)
            offset += w // tp
        return torch.cat(out, dim=self.dim)

