"""Gated DeltaNet (gated delta rule): a chunked pure-PyTorch path and the kernel dispatch.

Recurrence (per batch b, head h; state S_t is [K, V]; a_t = exp(g_t) and b_t = beta_t are scalars):

    S_t = a_t (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,        o_t = scale * S_t^T q_t

with g_t <= 0, beta_t in (0, 1) and q, k L2-normalised per head (the caller normalises; the same
contract as fla's ``chunk_gated_delta_rule`` with its in-kernel options off).

fla's kernels (``chunk_gated_delta_rule``, ``fused_recurrent_gated_delta_rule``) are Triton and only run
on CUDA, and fla's own CPU fallback (``naive_recurrent_gated_delta_rule``) loops over tokens.
``chunk_gated_delta_rule_torch`` is the chunked WY form of fla's chunk kernel in plain torch ops, so it
runs anywhere and autograd gives its backward. Inside a chunk of C tokens with state S at its start,
Gamma_i = exp(sum of g from the chunk start to i) and the new values d_j = b_j (v_j - (a_j S_{j-1})^T k_j)
solve the unit lower-triangular system

    (I + A) d = beta v - (beta Gamma k) S,    A_ij = beta_i (k_i . k_j) Gamma_i / Gamma_j   for j < i,

so d = u - w S with u = T (beta v), w = T (beta Gamma k), T = (I + A)^{-1} (the UT transform; one
triangular solve per chunk). Then, with q scaled, o_i = (Gamma_i q_i) S + sum_{j <= i} (q_i . k_j)
Gamma_i / Gamma_j d_j, and the state at the chunk end is Gamma_C S + sum_j (Gamma_C / Gamma_j) k_j d_j^T.
Only d = u - w S and that state update run in a Python loop over chunks; the rest is batched over all
chunks at once.

Precision with bf16 activations: ``chunk_gated_delta_rule_torch`` upcasts q, k, v, g, beta to fp32 and
does every product, sum and the triangular solve in fp32; the output returns in q's dtype, the state
stays fp32. fla's ``chunk_gated_delta_rule`` keeps in fp32 the in-chunk cumsum of g, every ``tl.dot``
accumulator (the inversion of I + A included) and the final state; it stores the inverse, w, u, the
per-chunk states and the new values in the input dtype and feeds them and bf16 q, k, v to the dots. So
every accumulation fla keeps fp32 is fp32 here too, and the operands are no coarser than the kernel's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import kernel_for

__all__ = ["chunk_gated_delta_rule_torch", "gated_delta_rule"]


def _segment_decay(g: torch.Tensor) -> torch.Tensor:
    """Decays between the tokens of a chunk.

    Args:
        g: [..., C] log-decay per token.

    Returns:
        [..., C, C], exp(sum_{j < s <= i} g_s) for j <= i (1 on the diagonal), 0 above.

    Each exponent is summed over its own range (a cumsum down a masked [C, C] copy of g), not taken as
    a difference of chunk cumsums, which would lose ~ulp(|cumsum|) and cancel in the gradient of g.
    """
    C = g.shape[-1]
    strict = torch.ones(C, C, dtype=torch.bool, device=g.device).tril(-1)
    seg = (g.unsqueeze(-1) * strict).cumsum(-2)  # row i, column j: sum of g_s over j < s <= i
    return seg.exp() * strict.logical_or(torch.eye(C, dtype=torch.bool, device=g.device))


def chunk_gated_delta_rule_torch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: float | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated delta rule in plain PyTorch (fp32 inside; a Python loop over chunks, never tokens).

    Args:
        q, k: [B, T, H, K], L2-normalised over K.
        v: [B, T, H, V].
        g: [B, T, H] log-decay, <= 0.
        beta: [B, T, H], in (0, 1).
        scale: defaults to K ** -0.5.
        initial_state: [B, H, K, V] or None.
        output_final_state: also return the state after the last token.
        chunk_size: tokens per chunk, >= 1 (a shorter input is one chunk; the tail is padded).

    Returns:
        o [B, T, H, V] in q's dtype; the final state [B, H, K, V] fp32, or None.

    Every exponential has an argument <= 0 (decays run forward from a chunk's start, or from a token to
    the chunk's end), so strongly decaying gates underflow to the right zeros instead of overflowing.
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    dtype = q.dtype
    if scale is None:
        scale = K ** -0.5
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    C = max(1, min(chunk_size, T))
    Tp = -(-T // C) * C
    N = Tp // C

    # [B, T, H, ...] -> [B, H, T, ...] fp32; zero tail padding (g = 0: no decay, beta = 0 and k = 0: no
    # update, so neither the outputs of real tokens nor the final state change).
    q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))
    g, beta = (t.transpose(1, 2).float() for t in (g, beta))
    if Tp != T:
        q, k, v = (F.pad(t, (0, 0, 0, Tp - T)) for t in (q, k, v))
        g, beta = (F.pad(t, (0, Tp - T)) for t in (g, beta))
    q = (q * scale).reshape(B, H, N, C, K)
    k = k.reshape(B, H, N, C, K)
    v = v.reshape(B, H, N, C, V)
    g, beta = g.reshape(B, H, N, C), beta.reshape(B, H, N, C)

    decay = _segment_decay(g)  # [B, H, N, C, C]
    gamma = g.cumsum(-1).exp()[..., None]  # chunk start to token i, [B, H, N, C, 1]
    to_end = decay[..., -1, :, None]  # exp(sum_{s > j} g_s): token j to the chunk end, [B, H, N, C, 1]

    # the UT transform T = (I + A)^{-1} of each chunk, then u = T diag(beta) v, w = T diag(beta) Gamma k:
    # solving for T (C right-hand sides) and two matmuls cost less than solving for u and w (K + V)
    eye = torch.eye(C, device=q.device)
    system = eye + beta[..., None] * ((k @ k.transpose(-1, -2)) * decay).tril(-1)
    t_beta = torch.linalg.solve_triangular(system, eye.expand_as(system), upper=False, unitriangular=True)
    t_beta = t_beta * beta[..., None, :]
    u, w = t_beta @ v, t_beta @ (gamma * k)

    S = q.new_zeros(B, H, K, V) if initial_state is None else initial_state.float()
    chunk_decay = gamma[..., -1, :, None]  # [B, H, N, 1, 1]
    k_end = (k * to_end).transpose(-1, -2)  # [B, H, N, K, C]
    starts, new_values = [], []
    # unbind, not indexing: each indexed slice would backpropagate a full-size zero gradient
    for u_n, w_n, k_n, a_n in zip(u.unbind(2), w.unbind(2), k_end.unbind(2), chunk_decay.unbind(2)):
        starts.append(S)
        d_n = u_n - w_n @ S
        new_values.append(d_n)
        S = a_n * S + k_n @ d_n
    d = torch.stack(new_values, dim=2)
    o = (q * gamma) @ torch.stack(starts, dim=2) + ((q @ k.transpose(-1, -2)) * decay) @ d

    o = o.reshape(B, H, Tp, V)[:, :, :T].transpose(1, 2).to(dtype)
    return o, (S if output_final_state else None)


def gated_delta_rule(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
    scale: float | None = None, initial_state: torch.Tensor | None = None, output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The gated delta rule with the best available kernel; shapes as :func:`chunk_gated_delta_rule_torch`.

    fla's ``chunk_gated_delta_rule`` on CUDA tensors, :func:`chunk_gated_delta_rule_torch` on CPU tensors;
    ``STATEX_KERNELS`` (``torch``, ``fla``, ``kernel``) as in :mod:`statex_dist.ops._dispatch`, whose
    :class:`KernelUnavailable` is raised when fla is required and does not import. ``fla`` on CPU tensors
    needs ``TRITON_INTERPRET=1``.

    The kernel gets the same arguments as the PyTorch path: g in log space, beta after its sigmoid and
    q, k already normalised (its ``use_gate_in_kernel``, ``use_beta_sigmoid_in_kernel`` and
    ``use_qk_l2norm_in_kernel`` off), so both paths have one contract and the gate, sigmoid and norm get
    their gradients from autograd outside the op on either path. fla picks its own backend behind that
    entry point: FlashQLA's fused kernels for fp16 / bf16 on Hopper and Blackwell when the ``flash_qla``
    package is installed (``FLA_FLASH_QLA=0`` keeps its Triton kernels), Triton otherwise.
    """
    kernel = kernel_for("gdn", q.device.type)
    if kernel is None:
        return chunk_gated_delta_rule_torch(q, k, v, g, beta, scale, initial_state, output_final_state)
    if initial_state is not None:
        initial_state = initial_state.float()  # the kernel keeps its state fp32
    return kernel(q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state)
