"""The ``STATEX_KERNELS`` switch shared by every op's dispatch (read on every call).

- ``auto`` (default): the library kernel on CUDA tensors when it imports, the PyTorch path otherwise.
- ``torch``: always the PyTorch path.
- ``kernel``: always the library kernels, also on CPU tensors (e.g. under ``TRITON_INTERPRET=1``).
- ``fla`` / ``mamba_ssm`` / ``causal_conv1d``: force that library for its op only (the others stay
  ``auto``). A forced kernel that cannot be imported is an error, not a silent fallback.
"""

from __future__ import annotations

import os

LIBRARIES = ("fla", "mamba_ssm", "causal_conv1d")


def kernel_choice(library: str) -> str:
    """``"auto"``, ``"torch"`` or ``"kernel"`` for an op implemented by ``library``."""
    value = os.environ.get("STATEX_KERNELS", "auto").strip().lower() or "auto"
    if value == "torch":
        return "torch"
    if value == "kernel" or value == library:
        return "kernel"
    if value == "auto" or value in LIBRARIES:
        return "auto"
    raise ValueError(f"STATEX_KERNELS={value!r}: expected auto, torch, kernel or one of {LIBRARIES}")


def use_kernel(choice: str, kernel, tensor, library: str) -> bool:
    """Whether to call ``kernel`` (None when its import failed) for ``tensor``."""
    if choice == "kernel" and kernel is None:
        raise RuntimeError(f"STATEX_KERNELS forces {library}, but its kernel cannot be imported")
    return kernel is not None and (choice == "kernel" or tensor.is_cuda)
