"""Mamba2 SSD (state space duality) scan: a chunked pure-PyTorch path and the kernel dispatch.

Per batch b and head h (group gi = h // (H // G); state h_t is [P, N]):

    h_t = exp(dt_t * A) h_{t-1} + dt_t * x_t^T B_t,        y_t = h_t C_t + D x_t   (then * silu(z_t))

mamba_ssm's ``mamba_chunk_scan_combined`` is Triton and needs CUDA or ``TRITON_INTERPRET=1`` (it imports
without mamba_ssm's compiled extension: :func:`statex_dist.ops._dispatch._load_mamba_ssd`); transformers'
PyTorch path repeats B and C over heads and builds [b, c, l, s, h] tensors. ``ssd_scan_torch`` keeps B/C
per group (C B^T is computed once per group and shared by its heads) and only materialises the per-head
[L, L] decay inside a chunk.

Precision with bf16 activations: ``ssd_scan_torch`` upcasts x, dt, B, C (and A, D, z, dt_bias) to fp32
and does every product and sum in fp32; y returns in x's dtype, the final state fp32. mamba_ssm's
``mamba_chunk_scan_combined`` keeps in fp32 dt after bias / softplus / clamp and its cumsum dA_cumsum, C B^T,
the per-chunk states (``states_in_fp32=True``) and their chunk-to-chunk passing, every ``tl.dot``
accumulator and the D-skip gradient; it feeds bf16 x, B, C to the dots. So every accumulation mamba_ssm
keeps fp32 is fp32 here too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._dispatch import kernel_for

__all__ = ["ssd_scan_torch", "ssd_scan", "ssd_log_decay"]


def _process_dt(dt, dt_bias, dt_softplus, dt_limit):
    """dt [b, l, h] -> fp32 dt as mamba_ssm uses it."""
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)  # threshold 20 as mamba_ssm's kernel
    if tuple(dt_limit) != (0.0, math.inf):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    return dt


def ssd_log_decay(dt, A, dt_bias=None, dt_softplus: bool = False, dt_limit=(0.0, math.inf)) -> torch.Tensor:
    """The summed log-decay of every head's state over the l tokens, sum_t dt_t * A (fp32 [b, h]): the
    state after them is exp(this) times the state before plus what they write (statex_dist.parallel.context)."""
    return (_process_dt(dt, dt_bias, dt_softplus, dt_limit) * A.float()).sum(1)


def ssd_scan_torch(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """Chunked SSD in plain PyTorch (fp32 inside), same contract as ``mamba_chunk_scan_combined``.

    Args:
        x: [b, l, h, p].
        dt: [b, l, h] raw time steps (``dt_bias`` added, then softplus if ``dt_softplus``, then
            clamped to ``dt_limit`` unless it is the default (0, inf)).
        A: [h], negative.
        B, C: [b, l, g, n], h % g == 0; head i reads group i // (h // g).
        chunk_size: tokens per chunk (any l; the tail is padded). The intra-chunk decays are
            exp(Acum_i - Acum_j) of chunk cumsums, as in mamba_ssm's kernel.
        D: [h] or [h, p] skip connection, or None.
        z: [b, l, h, p] gate (y * silu(z)), or None.
        dt_bias: [h] or None.
        initial_states: [b, h, p, n] or None.
        return_final_states: also return the state after the last token.

    Returns:
        y [b, l, h, p] in x's dtype, and the final state [b, h, p, n] fp32 if ``return_final_states``.
    """
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    if h % g:
        raise ValueError(f"nheads {h} is not a multiple of ngroups {g}")
    hg = h // g
    L = min(chunk_size, l)  # the result does not depend on it; a short input needs no padding
    lp = -(-l // L) * L
    nc = lp // L

    dt = _process_dt(dt, dt_bias, dt_softplus, dt_limit)
    xf, Bf, Cf = x.float(), B.float(), C.float()
    if lp != l:
        # dt = 0 on the padding: no decay and no input, so the real outputs and the final state keep.
        xf, Bf, Cf = (F.pad(t, (0, 0, 0, 0, 0, lp - l)) for t in (xf, Bf, Cf))
        dt = F.pad(dt, (0, 0, 0, lp - l))

    # chunk layout: heads split as [g, hg] so that C B^T is shared by the heads of a group
    xc = xf.reshape(b, nc, L, g, hg, p).permute(0, 1, 3, 4, 2, 5)  # [b, c, g, hg, L, p]
    dtc = dt.reshape(b, nc, L, g, hg).permute(0, 1, 3, 4, 2)  # [b, c, g, hg, L]
    Bc = Bf.reshape(b, nc, L, g, n).permute(0, 1, 3, 2, 4)  # [b, c, g, L, n]
    Cc = Cf.reshape(b, nc, L, g, n).permute(0, 1, 3, 2, 4)  # [b, c, g, L, n]

    dA = dtc * A.float().reshape(g, hg, 1)  # [b, c, g, hg, L], <= 0
    Acum = dA.cumsum(-1)  # decreasing inside each chunk
    xdt = xc * dtc[..., None]  # [b, c, g, hg, L, p]

    # 1) inside a chunk: y_i = sum_{j<=i} (C_i . B_j) exp(Acum_i - Acum_j) xdt_j (exponents <= 0)
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    seg = (Acum[..., :, None] - Acum[..., None, :]).masked_fill(~causal, -math.inf)
    CB = (Cc @ Bc.transpose(-1, -2))[:, :, :, None]  # [b, c, g, 1, L, L]
    y = (seg.exp() * CB) @ xdt  # [b, c, g, hg, L, p]

    # 2) state contributed by each chunk, at its end: sum_j exp(sum_{s>j} dA_s) xdt_j^T B_j
    #    (a suffix sum rather than Acum_last - Acum_j: exact 0 for the last token, no cancelling
    #    +1/-1 gradient paths)
    suffix = F.pad(dA.flip(-1).cumsum(-1)[..., :-1], (1, 0)).flip(-1)  # [b, c, g, hg, L]
    xdt_end = xdt * suffix.exp()[..., None]
    upd = xdt_end.transpose(-1, -2) @ Bc[:, :, :, None]  # [b, c, g, hg, p, n]

    # 3) chunk-to-chunk recurrence (a short loop over chunks)
    S = (
        xf.new_zeros(b, g, hg, p, n)
        if initial_states is None
        else initial_states.float().reshape(b, g, hg, p, n)
    )
    decay = Acum[..., -1:].exp()[..., None]  # whole-chunk decay [b, c, g, hg, 1, 1]
    starts = []
    for decay_c, upd_c in zip(decay.unbind(1), upd.unbind(1)):  # unbind: one backward node
        starts.append(S)
        S = decay_c * S + upd_c
    S_prev = torch.stack(starts, dim=1)  # state at each chunk start [b, c, g, hg, p, n]

    # 4) contribution of the chunk-start state: exp(Acum_i) C_i h_start
    y = y + (Cc[:, :, :, None] @ S_prev.transpose(-1, -2)) * Acum.exp()[..., None]

    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, lp, h, p)[:, :l]
    if D is not None:
        Df = D.float()
        y = y + x.float() * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(x.dtype)
    if return_final_states:
        return y, S.reshape(b, h, p, n)
    return y


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] = (0.0, math.inf),
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
):
    """SSD scan with the best available kernel. Arguments as :func:`ssd_scan_torch`.

    mamba_ssm's Triton kernel on CUDA tensors, :func:`ssd_scan_torch` on CPU tensors;
    ``STATEX_KERNELS`` (``torch``, ``mamba_ssm``, ``kernel``) as in :mod:`statex_dist.ops._dispatch`,
    whose :class:`KernelUnavailable` is raised when the kernel is required and does not import.
    """
    kernel = kernel_for("ssd", x.device.type)
    if kernel is None:
        return ssd_scan_torch(
            x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
            dt_limit=dt_limit, initial_states=initial_states, return_final_states=return_final_states,
        )
    return kernel(
        x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states,
        dt_softplus=dt_softplus, dt_limit=dt_limit, return_final_states=return_final_states,
    )
