"""Kernel layer: one dispatch point per op (the library kernel on CUDA tensors, PyTorch on CPU tensors).

- :func:`gla_attention`: gated linear attention (fla ``chunk_gla`` / :func:`chunk_gla_torch`).
- :func:`gated_delta_rule`: Gated DeltaNet (fla ``chunk_gated_delta_rule`` / :func:`chunk_gated_delta_rule_torch`).
- :func:`ssd_scan`: Mamba2 SSD scan (mamba_ssm ``mamba_chunk_scan_combined`` / :func:`ssd_scan_torch`).
- :func:`causal_conv1d`: depthwise causal conv (``causal_conv1d_fn`` / ``F.conv1d``).

``STATEX_KERNELS`` selects the implementation, resolved once per process and device type:
:func:`resolve_kernels`, :func:`kernel_summary` and :class:`KernelUnavailable`, see
:mod:`statex_dist.ops._dispatch`.

The op modules load on first access: ``statex_dist.cli_errors`` imports :class:`KernelUnavailable` from
here, and a command line's ``--help`` should not wait for torch.
"""

from importlib import import_module

from ._dispatch import KernelUnavailable, kernel_summary, resolve_kernels

_LAZY = {
    "gla_attention": "gla",
    "chunk_gla_torch": "gla",
    "gated_delta_rule": "gated_delta",
    "chunk_gated_delta_rule_torch": "gated_delta",
    "ssd_scan": "ssd",
    "ssd_scan_torch": "ssd",
    "ssd_log_decay": "ssd",
    "causal_conv1d": "conv",
    "causal_conv1d_torch": "conv",
}

__all__ = [
    "gla_attention",
    "gated_delta_rule",
    "ssd_scan",
    "causal_conv1d",
    "chunk_gla_torch",
    "chunk_gated_delta_rule_torch",
    "ssd_scan_torch",
    "ssd_log_decay",
    "causal_conv1d_torch",
    "KernelUnavailable",
    "resolve_kernels",
    "kernel_summary",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
