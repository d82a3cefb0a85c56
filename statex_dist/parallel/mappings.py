"""Autograd-aware TP collectives beyond megatron-core's mappings.

megatron-core's ``reduce_from_tensor_model_parallel_region`` has an identity backward: right when every
rank consumes the reduced tensor the same way (a row-parallel output). A sum of squares feeding each
rank's own channels (a norm whose group spans ranks) is consumed differently per rank, so its backward
must all-reduce too: torch.distributed.nn's all-reduce does. The two gathers are written here: one whose
result every rank uses identically (the full logits: the backward only slices), and one used differently
per rank (the backward sums over TP), where torch.distributed.nn's all_gather would do on NCCL but on gloo
emulates its reduce-scatter with scatters from *global* ranks 0..n-1, wrong for any TP group but the first.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region

from statex_dist.parallel import state


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the TP group; the gradient is summed over the group as well."""
    if state.tp_size() == 1:
        return x
    return dist_nn.all_reduce(x, group=state.tp_group())


def tp_reduced_grad(w: torch.Tensor) -> torch.Tensor:
    """Identity on the value; the gradient flowing back into ``w`` is summed over TP (megatron-core's
    copy-to-region).

    Used on a replicated tensor that each rank applies to its own shard of the work: a weight, whose full
    gradient is the sum of the ranks' partial ones, formed inside autograd so ZeRO's gradient hooks already
    see it; or a column-parallel layer's input, whose gradient each rank computes from its own columns.
    """
    if state.tp_size() == 1:
        return w
    return copy_to_tensor_model_parallel_region(w, state.tp_group())


class _GatherLastDim(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group, ctx.width = group, x.shape[-1]
        ctx.rank = dist.get_rank(group)
        pieces = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(pieces, x.contiguous(), group=group)
        return torch.cat(pieces, dim=-1)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad.narrow(-1, ctx.rank * ctx.width, ctx.width).contiguous(), None


def gather_last_dim(x: torch.Tensor) -> torch.Tensor:
    """All-gather this rank's channels [..., C / TP] into [..., C]; each rank uses the whole differently,
    so the backward sums the gradient over TP before taking this rank's slice (megatron-core's
    gather_from_tensor_model_parallel_region only slices)."""
    if state.tp_size() == 1:
        return x
    return _GatherLastDim.apply(x, state.tp_group())


class _GatherLastDimSliceBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group, ctx.width, ctx.rank = group, x.shape[-1], dist.get_rank(group)
        pieces = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(pieces, x.contiguous(), group=group)
        return torch.cat(pieces, dim=-1)

    @staticmethod
    def backward(ctx, grad):
        return grad.narrow(-1, ctx.rank * ctx.width, ctx.width).contiguous(), None


def gather_replicated_output(x: torch.Tensor) -> torch.Tensor:
    """All-gather [..., C / TP] into [..., C] where every rank then uses the whole identically (the full
    logits): the backward takes this rank's slice. megatron-core's gather_from_tensor_model_parallel_region
    does the same but allocates its output on CUDA, so it fails on the CPU."""
    if state.tp_size() == 1:
        return x
    return _GatherLastDimSliceBackward.apply(x, state.tp_group())
