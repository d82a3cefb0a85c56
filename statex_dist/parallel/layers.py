"""Tensor-parallel layers megatron-core does not provide.

megatron-core's ColumnParallelLinear splits its output dimension in one contiguous block; Mamba2's
in_proj packs five blocks [z | x | B | C | dt] that split separately (and B, C may stay whole), and
GLA's low-rank gate and per-head norms are replicated tensors whose gradients are partial per rank.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

from statex_dist.parallel import state
from statex_dist.parallel.sharding import ShardSpec


def mark(param: nn.Parameter, spec: ShardSpec) -> nn.Parameter:
    """Attach the layout to a parameter (read by the TP grad-reduce hook and by the optimizer's grouping)."""
    param.shard_spec = spec
    # megatron-core's own attribute: True for tensors that are split over TP (not duplicated)
    param.tensor_model_parallel = spec.dim is not None
    return param


class ReplicatedLinear(nn.Module):
    """y = x W^T (+ b) with W whole on every TP rank, fed by the replicated input.

    The input passes megatron-core's copy-to-region (identity forward, all-reduce of the input gradient),
    because each rank's output feeds only its own shard downstream. Gradients of W (and b) are partial per
    rank; they carry ``grad_reduce`` in their ShardSpec and are summed over TP after backward.

    Shapes: x [..., in_features] -> [..., out_features].
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False, layer=None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.weight = mark(nn.Parameter(torch.empty(out_features, in_features, dtype=dtype)),
                           ShardSpec((out_features, in_features), grad_reduce=True, layer=layer))
        self.bias = mark(nn.Parameter(torch.zeros(out_features, dtype=dtype)),
                         ShardSpec((out_features,), grad_reduce=True, layer=layer)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(copy_to_tensor_model_parallel_region(x, state.tp_group()), self.weight, self.bias)


class PackedColumnParallelLinear(nn.Module):
    """Column-parallel linear whose output packs blocks that split over TP separately (ShardSpec.parts).

    The local weight is the concatenation of this rank's piece of each block, so a checkpoint's full
    tensor maps to it through ``spec.shard``. Shapes: x [..., in_features] -> [..., local out].
    """

    def __init__(self, in_features: int, spec: ShardSpec, tp: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.spec = spec
        self.weight = mark(nn.Parameter(torch.empty(spec.local_shape(tp), dtype=dtype)), spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(copy_to_tensor_model_parallel_region(x, state.tp_group()), self.weight)
