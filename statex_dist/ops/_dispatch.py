"""Which implementation each op runs, decided once per process and device type, and said in one line.

``STATEX_KERNELS`` picks it:

- ``auto`` (default): the PyTorch path on CPU tensors (the CPU path, not a fallback); the library kernel on
  CUDA tensors, and :class:`KernelUnavailable` when that kernel cannot be imported.
- ``torch``: the PyTorch path everywhere.
- ``kernel``: the library kernels everywhere, CPU tensors included (Triton's under ``TRITON_INTERPRET=1``).
- ``fla`` / ``mamba_ssm`` / ``causal_conv1d``: that library's kernel everywhere for its op; the other ops
  stay ``auto``.
- ``torch:LIBRARY``: the PyTorch path for that library's op only (e.g. ``torch:causal_conv1d`` on a GPU
  without causal-conv1d's CUDA build: the conv runs in PyTorch, the scans in their kernels).
- several of these, comma-separated (``kernel,torch:causal_conv1d``).

A kernel that is asked for and cannot be imported is an error that names the import error and the ways out
(install the kernel, or ``STATEX_KERNELS=torch:LIBRARY`` / ``torch``); the PyTorch path never stands in
silently. Each op's kernel is imported at most once per process, on the first resolution that needs it, so
the first call of an op runs what its hundredth does. A run prints :func:`kernel_summary` once before it
starts.

No torch here: ``statex_dist.cli_errors`` imports :class:`KernelUnavailable` and stays light.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

LIBRARIES = ("fla", "mamba_ssm", "causal_conv1d")
SETTINGS = ("auto", "torch", "kernel") + LIBRARIES


class KernelUnavailable(RuntimeError):
    """A library kernel is required (CUDA tensors under ``auto``, or forced) but does not import."""


def _load_fla():
    from fla.ops.gla import chunk_gla, fused_recurrent_gla
    return chunk_gla, fused_recurrent_gla


def _load_fla_gdn():
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    return chunk_gated_delta_rule


def _load_mamba_ssd():
    """mamba_ssm's Triton ``mamba_chunk_scan_combined``, with or without mamba_ssm's compiled extensions.

    ``mamba_ssm/__init__`` imports Mamba1's compiled ``selective_scan_cuda``, which a
    ``MAMBA_SKIP_CUDA_BUILD`` install lacks; ``ssd_combined`` itself needs only triton, einops and
    mamba_ssm's own Triton and utility modules (causal_conv1d optionally). When the package import fails,
    the submodule is imported below a bare package object (its ``__path__``, not its ``__init__``), so
    whether the Triton SSD imports does not depend on which submodules the failed ``__init__`` happened to
    leave in ``sys.modules``.
    """
    try:
        importlib.import_module("mamba_ssm")
    except ImportError:
        spec = importlib.util.find_spec("mamba_ssm")
        if spec is None or spec.submodule_search_locations is None:
            raise
        bare = importlib.util.module_from_spec(spec)
        sys.modules["mamba_ssm"] = bare
        try:
            module = importlib.import_module("mamba_ssm.ops.triton.ssd_combined")
        finally:
            # The bare package leaves again: kept, it would make a later ``import mamba_ssm`` succeed
            # without the names its __init__ exports, and transformers (which picks its Mamba2 kernels by
            # whether ``import mamba_ssm`` works, whatever the device) would then run mamba_ssm's Triton
            # functions on CPU tensors too.
            if sys.modules.get("mamba_ssm") is bare:
                del sys.modules["mamba_ssm"]
        return module.mamba_chunk_scan_combined
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    return mamba_chunk_scan_combined


def _load_causal_conv1d():
    from causal_conv1d import causal_conv1d_fn
    return causal_conv1d_fn


@dataclass(frozen=True)
class Op:
    library: str     # the STATEX_KERNELS value that forces it
    function: str    # the library's function
    torch_path: str  # the PyTorch function that runs otherwise
    install: str     # how to get the kernel

    @property
    def kernel(self) -> str:
        """What a summary says when the kernel runs."""
        return f"{self.library} {self.function}"


_FLA_INSTALL = ("pip install flash-linear-attention triton (both pinned in requirements.txt; bash install.sh "
                "installs them)")

OPS = {
    "gla": Op("fla", "chunk_gla", "chunk_gla_torch", _FLA_INSTALL),
    "gdn": Op("fla", "chunk_gated_delta_rule", "chunk_gated_delta_rule_torch", _FLA_INSTALL),
    "ssd": Op("mamba_ssm", "mamba_chunk_scan_combined", "ssd_scan_torch",
              "bash install.sh, which installs triton and mamba-ssm with its build flags (requirements-cuda.txt; "
              "the Triton SSD needs no CUDA build of mamba-ssm)"),
    "conv1d": Op("causal_conv1d", "causal_conv1d_fn", "causal_conv1d_torch",
                 "STATEX_CUDA_EXTRAS=1 bash install.sh, which builds causal-conv1d's CUDA extension (needs nvcc)"),
}

# op -> its loader: called at most once per process (tests replace entries to count or to fail imports)
LOADERS: dict[str, Callable[[], object]] = {"gla": _load_fla, "gdn": _load_fla_gdn, "ssd": _load_mamba_ssd,
                                             "conv1d": _load_causal_conv1d}

_imported: dict[str, tuple[object, Optional[BaseException]]] = {}  # op -> (kernel or None, import error)
_resolved: dict[tuple[str, str, str], object] = {}  # (op, device type, setting) -> kernel, or None: PyTorch


def setting() -> str:
    """``STATEX_KERNELS``, validated (read on each call, so a test may change it)."""
    value = os.environ.get("STATEX_KERNELS", "auto").strip().lower() or "auto"
    _parse(value)
    return value


def _parse(value: str) -> tuple[str, set[str], set[str]]:
    """(the setting for every op: auto | torch | kernel, libraries forced, libraries on the PyTorch path)."""
    base, forced, torch_only = "auto", set(), set()
    for term in (t.strip() for t in value.split(",")):
        if term in ("auto", "torch", "kernel"):
            base = term
        elif term in LIBRARIES:
            forced.add(term)
        elif term.startswith("torch:") and term[len("torch:"):] in LIBRARIES:
            torch_only.add(term[len("torch:"):])
        else:
            raise ValueError(f"STATEX_KERNELS={value!r}: {term!r} is not one of {', '.join(SETTINGS)} or "
                             f"torch:LIBRARY ({', '.join(LIBRARIES)}); several are comma-separated")
    return base, forced, torch_only


def _wants_kernel(op: str, device_type: str, value: str) -> tuple[bool, bool]:
    """(the kernel runs, it was forced) for ``op`` on ``device_type`` tensors under ``value``."""
    base, forced, torch_only = _parse(value)
    library = OPS[op].library
    if library in torch_only:
        return False, False
    if library in forced or base == "kernel":
        return True, True
    if base == "torch":
        return False, False
    return device_type == "cuda", False


def _import(op: str) -> tuple[object, Optional[BaseException]]:
    if op not in _imported:
        try:
            _imported[op] = (LOADERS[op](), None)
        # Any failure, not only ImportError: a compiled extension can fail with OSError or RuntimeError,
        # and every failure is reported in KernelUnavailable's message rather than hidden.
        except Exception as e:  # noqa: BLE001
            _imported[op] = (None, e)
    return _imported[op]


def _unavailable(op: str, device_type: str, value: str, forced: bool, error: BaseException) -> str:
    o = OPS[op]
    kernel = f"{o.library}'s {o.function}"
    why = (f"STATEX_KERNELS={value} makes {op} run {kernel} on {device_type} tensors" if forced
           else f"{op} on {device_type} tensors runs {kernel} under STATEX_KERNELS={value}")
    return (f"{why}, but it cannot be imported ({type(error).__name__}: {error}). Either install it: "
            f"{o.install}; or set STATEX_KERNELS=torch:{o.library} to run this op's PyTorch path "
            f"({o.torch_path}) instead (STATEX_KERNELS=torch: every op's).")


def kernel_for(op: str, device_type: str):
    """The library kernel ``op`` runs on ``device_type`` tensors, or None for its PyTorch path.

    Resolved on the first call for each (op, device type, ``STATEX_KERNELS``) and cached; raises
    :class:`KernelUnavailable` when the kernel is required and does not import.
    """
    value = setting()
    key = (op, device_type, value)
    if key in _resolved:
        return _resolved[key]
    run_kernel, forced = _wants_kernel(op, device_type, value)
    kernel = None
    if run_kernel:
        kernel, error = _import(op)
        if kernel is None:
            raise KernelUnavailable(_unavailable(op, device_type, value, forced, error))
    _resolved[key] = kernel
    return kernel


def _ops(ops: Optional[Iterable[str]]) -> tuple[str, ...]:
    ops = tuple(OPS) if ops is None else tuple(ops)
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise ValueError(f"unknown ops {unknown}: expected some of {', '.join(OPS)}")
    return ops


def resolve_kernels(device_type: str, ops: Optional[Iterable[str]] = None) -> dict[str, str]:
    """{op: the implementation it runs on ``device_type`` tensors}, e.g. ``{"gla": "fla chunk_gla",
    "ssd": "mamba_ssm mamba_chunk_scan_combined", "conv1d": "torch"}``.

    Args:
        device_type: ``"cpu"`` or ``"cuda"`` (a ``torch.device``'s ``.type``).
        ops: the ops to resolve (an architecture's ``kernel_ops``); all of ``OPS`` when None.

    Raises:
        KernelUnavailable: one or more required kernels do not import; the message has one sentence per
            op naming the library, the import error and the two ways out.
    """
    found, missing = {}, []
    for op in _ops(ops):
        try:
            found[op] = OPS[op].kernel if kernel_for(op, device_type) is not None else "torch"
        except KernelUnavailable as e:
            missing.append(str(e))
    if missing:
        raise KernelUnavailable(" ".join(missing))
    return found


def kernel_summary(device_type: str, ops: Optional[Iterable[str]] = None) -> str:
    """One line for a run's log: ``kernels: gla=fla chunk_gla, ssd=torch, conv1d=torch (STATEX_KERNELS=auto)``."""
    found = resolve_kernels(device_type, ops)
    return f"kernels: {', '.join(f'{op}={impl}' for op, impl in found.items())} (STATEX_KERNELS={setting()})"


def _clear_cache() -> None:
    """Forget every resolution and import attempt (tests only: a process resolves once)."""
    _imported.clear()
    _resolved.clear()
