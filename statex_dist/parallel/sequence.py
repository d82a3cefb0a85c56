"""Sequence parallelism (Megatron-LM's, with TP): the residual stream between sublayers is split over the
TP ranks along time, each rank holding [B, T / TP, D], so norms and residual adds run on 1/TP of the
tokens. Before a sublayer's column-parallel input the slices are all-gathered; after its row-parallel
output the partial sums are reduce-scattered instead of all-reduced (the same bytes in total).

Why not megatron-core's SP mappings: they gather / scatter along dim 0 of its [S, B, H] layout; the models
here are [B, T, D], so these move along dim 1: the single-tensor collectives (NCCL, and gloo in torch
2.13) work on dim 0, so they run on a [T, B, ...] copy.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from statex_dist.parallel import state


def check_seq_len(T: int, tp: int) -> None:
    """Raise ValueError unless the sequence length splits over TP."""
    if T % tp:
        raise ValueError(f"sequence parallel: sequence length T={T} is not divisible by TP={tp}; use a "
                         f"sequence length that is a multiple of {tp} (data.seq_len), or set "
                         f"parallel.sequence_parallel=false")


# torch 2.13 renames all_gather_into_tensor / reduce_scatter_tensor (the old names warn)
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def _all_gather_t(x: torch.Tensor, group) -> torch.Tensor:
    """[B, t, ...] per rank -> [B, t * P, ...], rank order along dim 1."""
    p = dist.get_world_size(group)
    xt = x.transpose(0, 1).contiguous()
    out = xt.new_empty((xt.shape[0] * p, *xt.shape[1:]))
    _all_gather_single(out, xt, group=group)
    return out.transpose(0, 1).contiguous()


def _reduce_scatter_t(x: torch.Tensor, group) -> torch.Tensor:
    """[B, T, ...] per rank -> this rank's [B, T / P, ...] of the sum over ranks."""
    t = x.shape[1] // dist.get_world_size(group)
    xt = x.transpose(0, 1).contiguous()
    out = xt.new_empty((t, *xt.shape[1:]))
    _reduce_scatter_single(out, xt, group=group)
    return out.transpose(0, 1).contiguous()


def _slice_t(x: torch.Tensor, group) -> torch.Tensor:
    """[B, T, ...] -> this rank's [B, T / P, ...] (no communication)."""
    t = x.shape[1] // dist.get_world_size(group)
    return x.narrow(1, dist.get_rank(group) * t, t).contiguous()


class _TimeCollective(torch.autograd.Function):
    """``fwd`` in forward, ``bwd`` on the gradient: all-gather / reduce-scatter (the gradient of a gathered
    tensor is partial per rank: it feeds only this rank's channels), all-gather / slice (the gradient
    arrives already summed over TP), reduce-scatter / all-gather (a row-parallel output)."""

    @staticmethod
    def forward(ctx, x, group, fwd, bwd):
        ctx.group, ctx.bwd = group, bwd
        return fwd(x, group)

    @staticmethod
    def backward(ctx, grad):
        return ctx.bwd(grad, ctx.group), None, None, None


def gather_seq(x: torch.Tensor, grad_complete: bool = False) -> torch.Tensor:
    """This rank's time slice [B, T / TP, ...] -> the full [B, T, ...] on every rank.

    Backward: the gradient is summed over TP and sliced (a reduce-scatter), or with ``grad_complete``
    (the consumer already sums it over TP, e.g. GLA's low-rank gate feeding a column-parallel layer)
    only sliced. Replaces megatron-core's copy-to-region in front of a column-parallel layer.
    """
    if state.tp_size() == 1:
        return x
    return _TimeCollective.apply(x, state.tp_group(), _all_gather_t, _slice_t if grad_complete else _reduce_scatter_t)


def reduce_scatter_seq(x: torch.Tensor) -> torch.Tensor:
    """Partial sums [B, T, ...] on every rank -> this rank's time slice [B, T / TP, ...] of their sum.

    Replaces the all-reduce after a row-parallel layer (and the vocab-parallel embedding).
    """
    if state.tp_size() == 1:
        return x
    check_seq_len(x.shape[1], state.tp_size())
    return _TimeCollective.apply(x, state.tp_group(), _reduce_scatter_t, _all_gather_t)


def mark_sequence_parallel(param: torch.nn.Parameter) -> torch.nn.Parameter:
    """Flag a replicated parameter applied to the time-split stream (megatron-core's attribute): each rank
    sees only its tokens, so its gradient is summed over TP where it is used (``tp_reduced_grad``)."""
    param.sequence_parallel = True
    return param
