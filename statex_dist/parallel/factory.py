"""The linear layer a ShardSpec asks for, so a mixer's ``__init__`` is a flat list of projections (as in fla's
``layers/``) and the split rule is stated once, by the layout.

| spec | layer |
|---|---|
| ``dim=None`` | :class:`~statex_dist.parallel.layers.ReplicatedLinear` (its ``grad_reduce`` from the spec) |
| ``dim=0`` | megatron-core ``ColumnParallelLinear`` (:func:`~statex_dist.parallel.megatron_layers.column`); with ``parts``: :class:`~statex_dist.parallel.layers.PackedColumnParallelLinear` |
| ``dim=1`` | megatron-core ``RowParallelLinear`` (:func:`~statex_dist.parallel.megatron_layers.row`); with ``parts``: :class:`~statex_dist.parallel.layers.PackedRowParallelLinear` |
"""
from __future__ import annotations

from typing import Optional

import torch.nn as nn

from statex_dist.parallel import state
from statex_dist.parallel.layers import PackedColumnParallelLinear, PackedRowParallelLinear, ReplicatedLinear
from statex_dist.parallel.megatron_layers import column, row
from statex_dist.parallel.sharding import ShardSpec


def linear(spec: ShardSpec, mp_cfg, *, bias_spec: Optional[ShardSpec] = None, shared_input: bool = False,
           sequence_parallel: bool = False) -> nn.Module:
    """The layer of weight ``spec`` ([out, in]) on this TP rank, built with megatron-core config ``mp_cfg``.

    Args:
        bias_spec: the bias's spec (column-parallel and replicated layers only).
        shared_input: the input already passed copy-to-region (``to_column_input``), shared by sibling
            projections whose input gradients are then summed over TP once (column and replicated layers).
        sequence_parallel: a row-parallel layer reduce-scatters its output along time; a replicated layer
            without ``grad_reduce`` reads this rank's time slice (its weight gradient is summed over TP). A
            column-parallel layer refuses it: its input is gathered before it, by ``to_column_input``.

    Returns:
        a module mapping x [..., in (local for row-parallel)] -> [..., out (local for column-parallel)];
        megatron-core's layers return ``(y, bias)`` as they always do.
    """
    tp, dtype = state.tp_size(), mp_cfg.params_dtype
    if spec.dim is None:
        return ReplicatedLinear(spec, bias_spec, dtype=dtype, shared_input=shared_input,
                                sequence_parallel=sequence_parallel)
    if bias_spec is not None and (spec.dim != 0 or spec.parts is not None):
        raise ValueError(f"a bias on a {'packed ' if spec.parts else ''}{'row' if spec.dim else 'column'}-parallel "
                         f"layer is not built here: {spec}")
    if spec.dim == 0:
        if sequence_parallel:
            raise ValueError(f"a column-parallel layer reads the gathered input (to_column_input), not a time "
                             f"slice: build it without sequence_parallel ({spec})")
        if spec.parts is not None:
            return PackedColumnParallelLinear(spec, tp, dtype, shared_input=shared_input)
        return column(spec, mp_cfg, bias_spec=bias_spec, shared_input=shared_input)
    if spec.parts is not None:
        return PackedRowParallelLinear(spec, tp, dtype, sequence_parallel=sequence_parallel)
    return row(spec, mp_cfg, sequence_parallel=sequence_parallel)
