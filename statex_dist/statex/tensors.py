"""Seeded initialisers. Every random tensor comes from a generator seeded by (plan seed, parameter name),
so a tensor's bytes do not depend on the order the tensors are expanded in, on the process, or on Python's
hash randomisation. Values are drawn in fp32 on the CPU and then cast to the target dtype and device."""
from __future__ import annotations

import hashlib
import math

import torch


def generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.blake2b(f"{seed}\0{name}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2 ** 63 - 1))


def uniform(shape, lo: float, hi: float, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """U(lo, hi) of ``shape``, with ``like``'s dtype and device."""
    u = torch.rand(tuple(shape), generator=gen, dtype=torch.float32)
    return (lo + (hi - lo) * u).to(dtype=like.dtype, device=like.device)


def xavier_bound(shape, gain: float) -> float:
    """Bound of nn.init.xavier_uniform_ for a weight [out, in]: gain * sqrt(6 / (in + out))."""
    fan_out, fan_in = shape[0], math.prod(shape[1:])
    return gain * math.sqrt(6.0 / (fan_in + fan_out))


def default_bound(fan_in: int) -> float:
    """nn.Linear / nn.Conv1d default (kaiming-uniform, a=sqrt(5)) for weight and bias: 1 / sqrt(fan_in)."""
    return 1.0 / math.sqrt(fan_in)


def check_shape(name: str, tensor: torch.Tensor, want: tuple[int, ...]) -> None:
    if tuple(tensor.shape) != tuple(want):
        raise ValueError(f"{name}: expected shape {list(want)} for the original config, found {list(tensor.shape)}")
