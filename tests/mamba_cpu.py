"""What mamba_ssm and causal_conv1d need to import and run on a CPU-only machine, for the interpreted tests
(tests/test_ops_interpret.py); never used by the package (whose dispatch imports mamba_ssm's Triton SSD
without its compiled extension, statex_dist/ops/_dispatch.py).

On the CPU, call :func:`install` in a process of its own (it patches torch.cuda), before importing either library:
- both packages import their compiled extensions (``selective_scan_cuda``, ``causal_conv1d_cuda``) at module
  level, absent from a *_SKIP_CUDA_BUILD install: empty stub modules stand in (nothing calls them below);
- mamba_ssm's Triton wrappers enter ``torch.cuda.device(x.device.index)`` and read the SM count to size
  their backward grids: a no-op context and a fixed count;
- ``causal_conv1d_fn`` is the CUDA op: it is replaced by the package's own reference, ``causal_conv1d_ref``
  (same arguments, same [B, D, T] layout), so callers of ``causal_conv1d_fn`` (statex_dist.ops.conv's
  dispatch, mamba_ssm's Mamba2 mixer) run their CUDA-path code around it.
"""
from __future__ import annotations

import contextlib
import sys
import types


def stub_extensions(*names: str) -> None:
    """Empty modules for compiled extensions that do not import (nothing here calls into them)."""
    for ext in names:
        try:
            __import__(ext)
        except ImportError:
            sys.modules[ext] = types.ModuleType(ext)


def install() -> None:
    import torch
    stub_extensions("selective_scan_cuda", "causal_conv1d_cuda")
    torch.cuda.device = lambda *a, **k: contextlib.nullcontext()
    torch.cuda.get_device_properties = lambda *a, **k: types.SimpleNamespace(multi_processor_count=4)
    import causal_conv1d
    from causal_conv1d import causal_conv1d_interface as cc
    causal_conv1d.causal_conv1d_fn = cc.causal_conv1d_ref
    cc.causal_conv1d_fn = cc.causal_conv1d_ref
