"""Gated linear attention (GLA): a chunked pure-PyTorch path and the kernel dispatch.

Recurrence (per batch b, head h; state S_t is [K, V]):

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,        o_t = scale * q_t S_t

fla's kernels (``chunk_gla``, ``fused_recurrent_gla``) are Triton and only run on CUDA, and fla's own
CPU fallback (``naive_recurrent_gla``) loops over tokens. ``chunk_gla_torch`` is the chunked form in
plain torch ops, so it runs anywhere and autograd gives its backward.

Precision with bf16 activations: ``chunk_gla_torch`` upcasts q, k, v, g to fp32 and does every product
and sum in fp32; the output returns in q's dtype, the state stays fp32. fla's ``chunk_gla`` keeps in fp32
the in-chunk cumsum of g, the intra-chunk score matrix A, every ``tl.dot`` accumulator and the final
state (it asserts an fp32 initial state); it feeds bf16 q, k, v to the dots and stores the per-chunk
states in the input dtype. So every accumulation fla keeps fp32 is fp32 here too, and the operands are
no coarser than the kernel's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import kernel_for

__all__ = ["chunk_gla_torch", "gla_attention"]


def _suffix_sum(g: torch.Tensor) -> torch.Tensor:
    """Exclusive suffix sum along dim -2: out_j = sum_{s > j} g_s (exactly 0 for the last row)."""
    return F.pad(g.flip(-2).cumsum(-2)[..., :-1, :], (0, 0, 1, 0)).flip(-2)


def _intra_chunk_scores(q: torch.Tensor, k: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Gated scores inside chunks, by binary splitting.

    Args:
        q, k, g: [..., C, K] with C a power of two (g: the log-decay of each token).

    Returns:
        a: [..., C, C], a_ij = sum_k q_ik k_jk exp(sum_{j < s <= i} g_sk) for j <= i, 0 above.

    A block splits into halves; its (second half x first half) part is a product of two matrices
    around the boundary R: exp(G_i - G_j) = exp(G_i - R) * exp(R - G_j), both exponents <= 0. The
    halves recurse down to single tokens (exp(0) = 1). Nothing larger than [..., C, C] or [..., C, K]
    is materialised (pairwise decays would be [..., C, C, K]). The exponents are sums over their own
    range (a cumsum inside the half), not differences of chunk-level cumsums, which would lose
    ~ulp(|G|) and cancel in the gradient of g.
    """
    *lead, C, K = q.shape
    a = (q * k).sum(-1)[..., None, None]  # blocks of one token: [..., C, 1, 1]
    s = 2
    while s <= C:
        h = s // 2
        qb, kb, gb = (t.reshape(*lead, C // s, 2, h, K) for t in (q, k, g))
        q2 = qb[..., 1, :, :] * gb[..., 1, :, :].cumsum(-2).exp()  # exp(G_i - R)
        k1 = kb[..., 0, :, :] * _suffix_sum(gb[..., 0, :, :]).exp()  # exp(R - G_j)
        lower = q2 @ k1.transpose(-1, -2)  # [..., C/s, h, h]
        halves = a.reshape(*lead, C // s, 2, h, h)
        top = F.pad(halves[..., 0, :, :], (0, h))
        bottom = torch.cat([lower, halves[..., 1, :, :]], dim=-1)
        a = torch.cat([top, bottom], dim=-2)  # [..., C/s, s, s]
        s *= 2
    return a.reshape(*lead, C, C)


def chunk_gla_torch(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked GLA in plain PyTorch (fp32 inside; a Python loop over chunks, never over tokens).

    Args:
        q, k: [B, T, H, K]; v: [B, T, H, V].
        g: [B, T, H, K] log-decay, <= 0, of any magnitude.
        scale: defaults to K ** -0.5.
        initial_state: [B, H, K, V] or None.
        output_final_state: also return the state after the last token.
        chunk_size: a power of two (a shorter input uses the next power of two >= T).

    Returns:
        o [B, T, H, V] in q's dtype; the final state [B, H, K, V] fp32, or None.

    Every exponential has an argument <= 0 (no exp(-cumsum g) factorisation), so strongly decaying
    gates underflow to the right zeros instead of overflowing: inside a chunk see
    :func:`_intra_chunk_scores`; across chunks the state carries exp(G_last - G_j) k_j^T v_j and is
    read with exp(G_i) q_i.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype = q.dtype
    if scale is None:
        scale = K ** -0.5
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    C = min(chunk_size, 1 << max(T - 1, 0).bit_length())
    Tp = -(-T // C) * C
    N = Tp // C

    # [B, T, H, D] -> [B, H, T, D] fp32; zero tail padding (g = 0: no decay, k = 0: no update, so
    # neither the outputs of real tokens nor the final state change).
    q, k, v, g = (t.transpose(1, 2).float() for t in (q, k, v, g))
    if Tp != T:
        q, k, v, g = (F.pad(t, (0, 0, 0, Tp - T)) for t in (q, k, v, g))
    q = q * scale
    q, k, g = (t.reshape(B, H, N, C, K) for t in (q, k, g))
    v = v.reshape(B, H, N, C, V)

    G = g.cumsum(-2)  # inclusive cumsum inside each chunk [B, H, N, C, K]

    o = _intra_chunk_scores(q, k, g) @ v  # [B, H, N, C, V]

    # state increment of each chunk (decayed to the chunk end by an exclusive suffix sum of g, not
    # Glast - G, see _intra_chunk_scores), then the chunk-to-chunk recurrence
    upd = (k * _suffix_sum(g).exp()).transpose(-1, -2) @ v  # [B, H, N, K, V]
    decay = G[..., -1:, :].transpose(-1, -2).exp()  # whole-chunk decay [B, H, N, K, 1]
    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    starts = []
    # unbind, not indexing: each indexed slice would backpropagate a full-size zero gradient
    for decay_n, upd_n in zip(decay.unbind(2), upd.unbind(2)):
        starts.append(S)
        S = decay_n * S + upd_n
    o = o + (q * G.exp()) @ torch.stack(starts, dim=2)  # read the state at each chunk start

    o = o.reshape(B, H, Tp, V)[:, :, :T].transpose(1, 2).to(dtype)
    return o, (S if output_final_state else None)


def gla_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """GLA with the best available kernel; shapes as :func:`chunk_gla_torch`.

    fla's ``chunk_gla`` on CUDA tensors (``fused_recurrent_gla`` for T <= 64: decoding and short
    prompts), :func:`chunk_gla_torch` on CPU tensors; ``STATEX_KERNELS`` (``torch``, ``fla``,
    ``kernel``) as in :mod:`statex_dist.ops._dispatch`, whose :class:`KernelUnavailable` is raised when
    fla is required and does not import. ``fla`` on CPU tensors needs ``TRITON_INTERPRET=1``.
    """
    kernels = kernel_for("gla", q.device.type)
    if kernels is None:
        return chunk_gla_torch(q, k, v, g, scale, initial_state, output_final_state)
    chunk_gla, fused_recurrent_gla = kernels
    if initial_state is not None:
        initial_state = initial_state.float()  # fla asserts an fp32 state
    if q.shape[1] <= 64:
        return fused_recurrent_gla(
            q, k, v, gk=g, scale=scale, initial_state=initial_state, output_final_state=output_final_state
        )
    return chunk_gla(q, k, v, g, scale=scale, initial_state=initial_state, output_final_state=output_final_state)
