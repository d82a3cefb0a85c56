"""Tensor-parallel layers megatron-core does not provide.

megatron-core's ColumnParallelLinear splits its output dimension in one contiguous block; Mamba2's
in_proj packs five blocks [z | x | B | C | dt] that split separately (and B, C may stay whole), and
GLA's low-rank gate and per-head norms are replicated tensors whose gradients are partial per rank.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region, reduce_from_tensor_model_parallel_region
)

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


def local_parameter(spec: ShardSpec, tp: int, dtype: torch.dtype, value: float = None) -> nn.Parameter:
    """This rank's shard of a parameter, shaped and marked by its spec: uninitialised (the weights are drawn
    or loaded whole, statex_dist.models.init), or filled with ``value``."""
    t = torch.empty(spec.local_shape(tp), dtype=dtype)
    if value is not None:
        t.fill_(value)
    return mark(nn.Parameter(t), spec)


class ReplicatedLinear(nn.Module):
    """y = x W^T (+ b) with W whole on every TP rank, fed by the replicated input.

    ``spec.grad_reduce`` (the output feeds only this rank's shard of the work, e.g. q and k of a
    value-sharded GLA layer): the input passes megatron-core's copy-to-region (its gradient is summed over
    TP) and so does W's gradient, inside autograd.
    Without it (the consumer is itself TP-aware and hands back full gradients, e.g. GLA's low-rank gate
    feeding a column-parallel layer): a plain linear layer.
    ``sequence_parallel`` (without ``grad_reduce``): x is this rank's time slice, so W's gradient covers
    only its tokens and is summed over TP inside autograd.

    Shapes: x [..., in_features] -> [..., out_features].
    """

    def __init__(self, spec: ShardSpec, bias_spec: ShardSpec = None, dtype: torch.dtype = torch.float32,
                 shared_input: bool = False, sequence_parallel: bool = False):
        super().__init__()
        if sequence_parallel and spec.grad_reduce:
            raise ValueError("ReplicatedLinear: sequence_parallel applies to a plain layer (no grad_reduce)")
        self.partial = spec.grad_reduce
        self.sequence_parallel = sequence_parallel
        self.copy_input = not shared_input  # shared_input: the caller already passed x through copy-to-region
        self.weight = local_parameter(spec, state.tp_size(), dtype)   # replicated: the whole tensor
        self.bias = local_parameter(bias_spec, state.tp_size(), dtype, 0.0) if bias_spec is not None else None
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

    def __init__(self, spec: ShardSpec, tp: int, dtype: torch.dtype = torch.float32, shared_input: bool = False):
        super().__init__()
        self.spec = spec
        self.copy_input = not shared_input
        self.weight = local_parameter(spec, tp, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.copy_input:
            x = copy_to_tensor_model_parallel_region(x, state.tp_group())
        return F.linear(x, self.weight)


class PackedRowParallelLinear(nn.Module):
    """Row-parallel linear whose input packs blocks split separately over TP (a value-sharded GLA layer
    with several heads holds a slice of every head). x [B, T, local in] -> [B, T, out], all-reduced; with
    ``sequence_parallel`` reduce-scattered along time instead: [B, T / TP, out]."""

    def __init__(self, spec: ShardSpec, tp: int, dtype: torch.dtype = torch.float32, sequence_parallel: bool = False):
        super().__init__()
        self.sequence_parallel = sequence_parallel
        self.weight = local_parameter(spec, tp, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.sequence_parallel:
            return reduce_scatter_seq(y)
        return reduce_from_tensor_model_parallel_region(y, state.tp_group())
