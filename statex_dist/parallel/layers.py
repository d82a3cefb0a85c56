"""Tensor-parallel layers megatron-core does not provide.

megatron-core's ColumnParallelLinear splits its output dimension in one contiguous block; Mamba2's
in_proj packs five blocks [z | x | B | C | dt] that split separately (and B, C may stay whole), and
GLA's low-rank gate and per-head norms are replicated tensors whose gradients are partial per rank.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from megatron.core.tensor_parallel.mappings import (copy_to_tensor_model_parallel_region,
                                                   reduce_from_tensor_model_parallel_region)

from statex_dist.parallel import state
from statex_dist.parallel.mappings import tp_reduced_grad
from statex_dist.parallel.sequence import mark_sequence_parallel, reduce_scatter_seq
from statex_dist.parallel.sharding import ShardSpec


def mark(param: nn.Parameter, spec: ShardSpec) -> nn.Parameter:
    """Attach the layout to a parameter (read by the TP grad-reduce hook and by the optimizer's grouping)."""
    param.shard_spec = spec
    # megatron-core's own attribute: True for tensors that are split over TP (not duplicated)
    param.tensor_model_parallel = spec.dim is not None
    return param


class ReplicatedLinear(nn.Module):
    """y = x W^T (+ b) with W whole on every TP rank, fed by the replicated input.

    ``partial_grads=True`` (the output feeds only this rank's shard of the work, e.g. q and k of a
    value-sharded GLA layer): the input passes megatron-core's copy-to-region (its gradient is summed over
    TP) and so does W's gradient, inside autograd (``grad_reduce`` in the ShardSpec).
    ``partial_grads=False`` (the consumer is itself TP-aware and hands back full gradients, e.g. GLA's
    low-rank gate feeding a column-parallel layer): a plain linear layer.
    ``sequence_parallel`` (with ``partial_grads=False``): x is this rank's time slice, so W's gradient
    covers only its tokens and is summed over TP inside autograd.

    Shapes: x [..., in_features] -> [..., out_features].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, layer=None,
                 dtype: torch.dtype = torch.float32, partial_grads: bool = True, shared_input: bool = False,
                 sequence_parallel: bool = False):
        super().__init__()
        if sequence_parallel and partial_grads:
            raise ValueError("ReplicatedLinear: sequence_parallel applies to a plain layer (partial_grads=False)")
        self.partial = partial_grads
        self.sequence_parallel = sequence_parallel
        self.copy_input = not shared_input  # shared_input: the caller already passed x through copy-to-region
        self.weight = mark(nn.Parameter(torch.empty(out_features, in_features, dtype=dtype)),
                           ShardSpec((out_features, in_features), grad_reduce=partial_grads, layer=layer))
        self.bias = mark(nn.Parameter(torch.zeros(out_features, dtype=dtype)),
                         ShardSpec((out_features,), grad_reduce=partial_grads, layer=layer)) if bias else None
        if sequence_parallel:
            for p in (self.weight, self.bias):
                if p is not None:
                    mark_sequence_parallel(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.partial:
            if self.sequence_parallel:
                b = tp_reduced_grad(self.bias) if self.bias is not None else None
                return F.linear(x, tp_reduced_grad(self.weight), b)
            return F.linear(x, self.weight, self.bias)
        b = tp_reduced_grad(self.bias) if self.bias is not None else None
        if self.copy_input:
            x = copy_to_tensor_model_parallel_region(x, state.tp_group())
        return F.linear(x, tp_reduced_grad(self.weight), b)


class PackedColumnParallelLinear(nn.Module):
    """Column-parallel linear whose output packs blocks that split over TP separately (ShardSpec.parts).

    The local weight is the concatenation of this rank's piece of each block, so a checkpoint's full
    tensor maps to it through ``spec.shard``. Shapes: x [..., in_features] -> [..., local out].
    """

    def __init__(self, in_features: int, spec: ShardSpec, tp: int, dtype: torch.dtype = torch.float32,
                 shared_input: bool = False):
        super().__init__()
        self.spec = spec
        self.copy_input = not shared_input
        self.weight = mark(nn.Parameter(torch.empty(spec.local_shape(tp), dtype=dtype)), spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.copy_input:
            x = copy_to_tensor_model_parallel_region(x, state.tp_group())
        return F.linear(x, self.weight)


class PackedRowParallelLinear(nn.Module):
    """Row-parallel linear whose input packs blocks split separately over TP (a value-sharded GLA layer
    with several heads holds a slice of every head). x [B, T, local in] -> [B, T, out], all-reduced; with
    ``sequence_parallel`` reduce-scattered along time instead: [B, T / TP, out]."""

    def __init__(self, out_features: int, spec: ShardSpec, tp: int, dtype: torch.dtype = torch.float32,
                 sequence_parallel: bool = False):
        super().__init__()
        self.sequence_parallel = sequence_parallel
        self.weight = mark(nn.Parameter(torch.empty(spec.local_shape(tp), dtype=dtype)), spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.sequence_parallel:
            return reduce_scatter_seq(y)
        return reduce_from_tensor_model_parallel_region(y, state.tp_group())
