"""Autograd-aware TP collectives beyond megatron-core's mappings.

megatron-core's ``reduce_from_tensor_model_parallel_region`` has an identity backward: right when every
rank consumes the reduced tensor the same way (a row-parallel output). A sum of squares feeding each
rank's own channels (a norm whose group spans ranks) is consumed differently per rank, so its backward
must all-reduce too.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

from statex_dist.parallel import state


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the TP group; the gradient is summed over the group as well."""
    if state.tp_size() == 1:
        return x
    return _AllReduceSum.apply(x, state.tp_group())


def tp_reduced_grad(w: torch.Tensor) -> torch.Tensor:
    """Identity on the value; the gradient flowing back into ``w`` is summed over TP.

    Used on a replicated weight that each rank applies to its own shard of the work: its full gradient is
    the sum of the ranks' partial ones, formed inside autograd so ZeRO's gradient hooks already see it.
    """
    if state.tp_size() == 1:
        return w
    return copy_to_tensor_model_parallel_region(w, state.tp_group())
