"""Depthwise causal 1-D convolution (Mamba2's short conv) on channels-last inputs, and its dispatch.

The ``causal_conv1d`` package is CUDA-only (its import fails without the compiled extension); the PyTorch
path is ``F.conv1d`` with left padding, or with the carried state prepended.

Precision with bf16 activations: as causal_conv1d's CUDA kernel, which loads bf16 inputs and weights and
sums the W taps, the bias and the SiLU in fp32, the PyTorch path convolves in fp32 and rounds once, to x's
dtype, at the end (its reference ``causal_conv1d_ref`` convolves in the weight's dtype instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._dispatch import kernel_for

__all__ = ["causal_conv1d", "causal_conv1d_torch"]

_ACTIVATIONS = (None, "silu", "swish")


def causal_conv1d_torch(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """out[:, t, d] = act(bias[d] + sum_w weight[d, w] * xx[:, t + w, d]), xx = [state or 0; x].

    Args:
        x: [B, T, D]; weight: [D, W]; bias: [D] or None; activation: None or "silu".
        initial_state: [B, D, W-1], the W-1 inputs before x (zeros when None).

    Returns:
        out [B, T, D] in x's dtype, and the final state [B, D, W-1] (the last W-1 inputs) when
        ``return_final_state``.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    D, W = weight.shape
    xt = x.transpose(1, 2)  # [B, D, T]
    if initial_state is None:
        xx = F.pad(xt, (W - 1, 0))
    else:
        xx = torch.cat([initial_state.to(xt.dtype), xt], dim=-1)
    out = F.conv1d(xx.float(), weight.float()[:, None, :], None if bias is None else bias.float(), groups=D)
    if activation is not None:
        out = F.silu(out)
    out = out.transpose(1, 2).to(x.dtype)
    if return_final_state:
        return out, xx[..., xx.shape[-1] - (W - 1):]
    return out


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    initial_state: torch.Tensor | None = None,
    return_final_state: bool = False,
):
    """Causal depthwise conv with the best available kernel. Arguments as :func:`causal_conv1d_torch`.

    On CUDA tensors the ``causal_conv1d`` package's ``causal_conv1d_fn`` (which takes [B, D, T]), on CPU
    tensors :func:`causal_conv1d_torch`; ``STATEX_KERNELS`` as in :mod:`statex_dist.ops._dispatch`, whose
    :class:`KernelUnavailable` is raised when the kernel is required and does not import.
    """
    kernel = kernel_for("conv1d", x.device.type)
    if kernel is None:
        return causal_conv1d_torch(x, weight, bias, activation, initial_state, return_final_state)
    # causal_conv1d_fn takes [B, D, T]; with states it wants the channels-last layout, which is
    # exactly the transpose of a contiguous [B, T, D] (and of a contiguous [B, W-1, D] state).
    xt = x.contiguous().transpose(1, 2)
    if initial_state is not None:
        initial_state = initial_state.transpose(1, 2).contiguous().transpose(1, 2).to(x.dtype)
    res = kernel(
        xt, weight, bias, initial_states=initial_state, return_final_states=return_final_state,
        activation=activation,
    )
    if return_final_state:
        out, final_state = res
        return out.transpose(1, 2), final_state
    return res.transpose(1, 2)
