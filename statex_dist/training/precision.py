"""The precision each parameter is computed in during a forward pass, as recorded from the ops that read it.

Under DeepSpeed bf16 every parameter of the module is stored in bf16 (the engine casts them all; its
``keep_in_fp32_modules`` spares buffers only, and the ZeRO and BF16 optimizers flatten each group into one
bf16 buffer); the fp32 master copy lives in the optimizer. What a parameter's value then goes through is
decided by the forward: a parameter the model upcasts before use (``A_log``, ``dt_bias``, ``D``, the norm
weights, the convolution taps) is computed on in fp32, a matmul weight in bf16. The model docstrings
(``Mamba2Mixer``, ``GatedLinearAttention``) list which is which.

:class:`ForwardPrecision` records it at the dispatcher: for every op that reads a parameter (directly, through
a view of it, or through a copy of it in its own dtype), the dtype of the op's result. An upcast shows as
``_to_copy`` to fp32, a bf16 product as a bf16 result, an fp32 op mixing in the bf16 parameter by type
promotion as fp32 (its value enters exactly). Kernels called outside the dispatcher (Triton, the CUDA
extensions) are not seen: on CUDA a parameter handed straight to one is missing from the record.
"""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_COPIES = (torch.ops.aten.clone.default, torch.ops.aten._to_copy.default)


def _address(t: torch.Tensor):
    """(storage address, byte address of the first element), or None for a tensor without data."""
    try:
        base = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None
    start = t.data_ptr()
    return None if base == 0 or start == 0 else (base, start)


class ForwardPrecision(TorchDispatchMode):
    """``with ForwardPrecision(module) as rec: module(x)``; then ``rec.seen``: parameter name -> the set of
    dtypes of the results of the ops that read it, and ``rec.unseen()``: the parameters no op read.

    Parameters are found by address (storage and byte range), so views into a flat optimizer buffer
    (DeepSpeed's bf16 groups) and views of a parameter (a transpose, a slice) count as the parameter. A copy
    in the same dtype (``clone``, ``.to`` of the same dtype) is followed as the parameter it copies.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.names = [n for n, _ in module.named_parameters()]
        self._ranges: dict[int, list[tuple[int, int, str]]] = defaultdict(list)
        for name, p in module.named_parameters():
            self._add(p, name)
        self._copies: list[torch.Tensor] = []   # held so that their memory is not reused while recording
        self.seen: dict[str, set[torch.dtype]] = defaultdict(set)

    def _add(self, t: torch.Tensor, name: str) -> None:
        addr = _address(t)
        if addr is None:
            raise ValueError(f"{name}: a parameter without data cannot be followed")
        base, start = addr
        self._ranges[base].append((start, start + t.numel() * t.element_size(), name))

    def _owner(self, t: torch.Tensor):
        addr = _address(t)
        if addr is None:
            return None
        base, start = addr
        return next((n for lo, hi, n in self._ranges.get(base, ()) if lo <= start < hi), None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        owners = {n for n in map(self._owner, inputs) if n is not None}
        if not owners or func.is_view:
            return out
        results = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if not results:
            return out
        if func in _COPIES and len(inputs) == 1 and results[0].dtype == inputs[0].dtype:
            (name,) = owners
            self._add(results[0], name)
            self._copies.append(results[0])
            return out
        for name in owners:
            self.seen[name].add(results[0].dtype)
        return out

    def unseen(self) -> list[str]:
        return [n for n in self.names if n not in self.seen]

    def table(self) -> dict[str, list[str]]:
        """name -> sorted dtype names (``"bfloat16"``, ``"float32"``): picklable, for a worker's result."""
        return {n: sorted(str(d).removeprefix("torch.") for d in self.seen[n])
                for n in self.names if n in self.seen}
