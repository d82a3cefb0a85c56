"""Context parallelism (CP) by state passing: each sequence split into ``cp`` contiguous segments, one per rank
of a CP group (megatron-core's context-parallel groups; ranks ordered TP innermost, then CP, then DP, then PP).

A recurrent layer needs from the ranks before it only the state entering its segment, and that state is affine
in theirs: S_end = M(S_start) + S_end(0), M the segment's transition. For GLA (a decay per key channel) and
Mamba2 (a scalar a head) M multiplies by exp(G), G the segment's summed log-decay; for Gated DeltaNet M is a
[d_k, d_k] matrix per head, prod_t a_t (I - b_t k_t k_t^T), which the same scan gives as its final state from
the identity with zero values. So each rank (a) scans its segment from zeros for S_end(0) and forms its
transition, (b) all-gathers both over the CP group (:func:`entering_state`: one collective a layer, its size
independent of T), (c) composes the state entering its segment, h_r = S_{r-1} + M_{r-1}(S_{r-2} + ...), and
(d) scans its segment again from h_r for its outputs (:func:`segment_scan`). Only the ranks between the first
and the last need a transition, the first no second scan (its h is zero) and the last no first one (nobody
reads its S_end): at CP=2 each rank scans once. The short convolutions read the last ``W - 1`` inputs of the
segment before (:func:`previous_tails`).

Gradients flow back through the same all-gather (:class:`_Gather`): each rank reads the gathered tensor in
its own way, so the backward all-reduces the gathered gradient and each rank keeps its own slice (what
megatron-core's ``gather_from_sequence_parallel_region`` does with a reduce-scatter, which gloo lacks). Every
rank keeps the gathered tensor in its graph (rank 0 with weight zero) so every rank joins that all-reduce.

Each rank's loss covers its own tokens; the gradient reduction spans DP x CP, so the step is the mean over
all tokens as without CP.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.distributed as dist


_off = False


def _ps():
    # megatron-core loads with the process groups, not with the command lines that import this module
    from megatron.core import parallel_state
    return parallel_state


def size() -> int:
    """Ranks in this process's CP group (1 without CP, without process groups, or inside :func:`off`)."""
    if _off or not _ps().model_parallel_is_initialized():
        return 1
    return _ps().get_context_parallel_world_size()


@contextlib.contextmanager
def off():
    """Each rank runs whole sequences (evaluation during a CP run: the mixers take no segment)."""
    global _off
    was, _off = _off, True
    try:
        yield
    finally:
        _off = was


def rank() -> int:
    return _ps().get_context_parallel_rank() if size() > 1 else 0


def group():
    return _ps().get_context_parallel_group()


def check_no_state(initial_state, output_final_state: bool) -> None:
    """A mixer under CP takes its initial state from the ranks before and returns none (training only)."""
    if initial_state is not None or output_final_state:
        raise ValueError("a recurrent state passed in or out (segmented evaluation, eval.segment_len) is not "
                         "available under context parallelism; evaluate with parallel.cp=1")


def segment(t: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """This rank's contiguous segment of ``t`` along ``dim`` (the sequence: [B, T, ...] -> [B, T / cp, ...])."""
    n = size()
    if n == 1:
        return t
    if t.shape[dim] % n:
        raise ValueError(f"a sequence of {t.shape[dim]} tokens does not split into parallel.cp={n} equal segments; "
                         f"use a sequence length divisible by {n}")
    return t.chunk(n, dim=dim)[rank()]


class _Gather(torch.autograd.Function):
    """x [...] -> [cp, ...] stacked over the CP group; backward: the gradient summed over the group, this
    rank's slice (each rank reads the whole differently)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, grp) -> torch.Tensor:
        ctx.grp = grp
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(grp))]
        dist.all_gather(parts, x, group=grp)
        return torch.stack(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.grp)
        return grad[dist.get_rank(ctx.grp)], None


def gather(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank of the CP group, stacked in rank order: [cp, *x.shape]; differentiable.

    Under autograd every rank records the exchange, also one whose ``x`` needs no gradient (the last rank's
    zeros), so that every rank joins the backward's all-reduce."""
    if torch.is_grad_enabled() and not x.requires_grad:
        x = x.detach().requires_grad_()
    return _Gather.apply(x, group())


def entering_state(final: torch.Tensor, transition: torch.Tensor, matrix: bool = False) -> torch.Tensor:
    """The state entering this rank's segment.

    Args:
        final: the state after this rank's segment scanned from zeros, [B, *S] fp32.
        transition: the segment's transition M: a summed log-decay broadcastable to ``final`` ([B, H, d_k, 1]
            for GLA, [B, H, 1, 1] for Mamba2; M(S) = exp(G) * S), or with ``matrix`` [B, H, d_k, d_k]
            (M(S) = M @ S, Gated DeltaNet).

    Returns:
        h [B, *S] fp32 (zeros on rank 0).
    """
    n_state = final[0].numel()
    packed = gather(torch.cat([final.float().flatten(1), transition.float().flatten(1)], dim=1))
    states = packed[..., :n_state].reshape(-1, *final.shape)                  # [cp, B, *S]
    transitions = packed[..., n_state:].reshape(-1, *transition.shape)
    h = states[0] * 0   # rank 0: zeros, but in the graph, so rank 0 joins the backward all-reduce
    for j in range(rank()):
        h = (transitions[j] @ h if matrix else torch.exp(transitions[j]) * h) + states[j]
    return h


def segment_scan(scan: Callable[[Optional[torch.Tensor], bool], tuple], transition: Callable[[], torch.Tensor],
                 state_shape: tuple[int, ...], transition_shape: tuple[int, ...], device: torch.device,
                 matrix: bool = False) -> torch.Tensor:
    """This rank's output of a scan over its segment, starting from the state the segments before leave.

    Args:
        scan: ``(initial_state or None, output_final_state) -> (out, final_state or None)``, the op as the
            mixer calls it.
        transition: the segment's transition (see :func:`entering_state`), called on the ranks whose
            transition a later rank reads (neither the first nor the last).
        state_shape, transition_shape: [B, *S] and the transition's shape (fp32).
    """
    r, n = rank(), size()
    zeros = lambda shape: torch.zeros(shape, dtype=torch.float32, device=device)   # noqa: E731
    if r == n - 1:   # nobody reads the last segment's own final state: it sends zeros and scans once, from h
        out0, final = None, zeros(state_shape)
    else:
        out0, final = scan(None, True)
    h = entering_state(final, transition() if 0 < r < n - 1 else zeros(transition_shape), matrix)
    if r == 0:
        return out0 + (0 * h.sum()).to(out0.dtype)   # h is zero; the term keeps the exchange in the graph
    return scan(h, False)[0]


def previous_tails(inputs: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """The short convolutions' initial states: the last ``width - 1`` inputs of the previous rank's segment.

    Args:
        inputs: each convolution's input on this segment, [B, T, C] (T >= width - 1).
        width: the convolutions' kernel width W.

    Returns:
        {name: [B, C, W - 1]} as ``ops.causal_conv1d`` takes ``initial_state`` (zeros on rank 0).
    """
    names = list(inputs)
    tails = [inputs[k][:, inputs[k].shape[1] - (width - 1):].transpose(1, 2) for k in names]
    sizes = [t.shape[1] for t in tails]
    prev = gather(torch.cat(tails, dim=1))[max(rank() - 1, 0)]
    if rank() == 0:
        prev = prev * 0   # no segment before the first: zeros, in the graph (see the module docstring)
    return dict(zip(names, prev.split(sizes, dim=1)))
