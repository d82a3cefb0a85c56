"""Kernel layer: one dispatch point per op (library CUDA/Triton kernel when usable, PyTorch otherwise).

- :func:`gla_attention`: gated linear attention (fla ``chunk_gla`` / :func:`chunk_gla_torch`).
- :func:`ssd_scan`: Mamba2 SSD scan (mamba_ssm ``mamba_chunk_scan_combined`` / :func:`ssd_scan_torch`).
- :func:`causal_conv1d`: depthwise causal conv (``causal_conv1d_fn`` / ``F.conv1d``).

``STATEX_KERNELS`` selects the implementation, see :mod:`statex_dist.ops._dispatch`.
"""

from .conv import causal_conv1d, causal_conv1d_torch
from .gla import chunk_gla_torch, gla_attention
from .ssd import ssd_scan, ssd_scan_torch

__all__ = [
    "gla_attention",
    "ssd_scan",
    "causal_conv1d",
    "chunk_gla_torch",
    "ssd_scan_torch",
    "causal_conv1d_torch",
]
