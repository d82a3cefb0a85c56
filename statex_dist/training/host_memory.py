"""Host memory of a CPU run: tensors' blocks given back to the system when freed.

torch's CPU allocator is the C library's malloc (it has no cache of its own to empty; ``torch.cuda.empty_cache``
is CUDA's). glibc serves a block below its mmap threshold from its heap, and the threshold grows with every
large block freed, up to 32 MB: most activations (a few MB each at real widths) then come from the heap, whose
freed holes later tensors of other sizes cannot all reuse. Measured at GLA-340M's width and TP=2, a step's
forward grew the RSS by 4.5 GB for 2.5 GB of saved activations, and the RSS after a backward stayed 4 GB above
the tensors alive, under the optimizer step's own allocations (BENCHMARKS.md, memory per rank). Two glibc
settings fix it, on CPU runs only (CUDA keeps activations on the device):

- a fixed mmap threshold of 1 MiB (``mallopt(M_MMAP_THRESHOLD)``, what ``MALLOC_MMAP_THRESHOLD_`` sets): every
  tensor of 1 MiB or more is its own mapping, returned whole when freed, so the forward's peak is the saved
  activations and nothing is left behind; smaller blocks stay on the heap;
- ``malloc_trim`` before and after each optimizer step returns what the heap has free.

The price: the pages of every such tensor are faulted in (and zeroed by the kernel) anew instead of reused from
the heap. A forward and backward at GLA-340M's width (4 layers, one process) took 4.95 s instead of 3.82 (mean
of 5 pairs; transparent huge pages did not help): 30% slower, for a peak 18% lower at TP=2. Where speed
matters more, setting ``MALLOC_MMAP_THRESHOLD_`` (glibc's own variable; 33554432 is its ceiling) keeps that
choice. Elsewhere than glibc (musl, macOS) neither setting exists and the libc's own policy stays.
"""
from __future__ import annotations

import ctypes
import os

# the process's own symbols (dlopen(NULL), which cannot fail): glibc's mallopt and malloc_trim where the C
# library is glibc; elsewhere they are absent, and the libc's own policy stays (the module's docstring)
_LIBC = ctypes.CDLL(None)
_M_MMAP_THRESHOLD = -3           # glibc's malloc.h
MMAP_THRESHOLD = 1 << 20


def map_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve blocks of ``threshold`` bytes or more by their own mappings from now on (glibc's mallopt);
    returns whether the libc took it. A threshold the user set (``MALLOC_MMAP_THRESHOLD_``) is left as it is:
    the setting trades speed for memory (see the module's docstring)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    mallopt = getattr(_LIBC, "mallopt", None)
    return bool(mallopt and mallopt(_M_MMAP_THRESHOLD, threshold) == 1)


def _malloc_trim():
    return getattr(_LIBC, "malloc_trim", None)


def release() -> bool:
    """Return the C heap's free pages to the system; False where the libc has no ``malloc_trim``."""
    trim = _malloc_trim()
    if not trim:
        return False
    trim(0)
    return True


def release_around_steps(engine) -> bool:
    """Release before each optimizer step of a DeepSpeed engine (the backward's activations are free by then,
    and DeepSpeed's gradient flattening comes next) and after it (the step's temporaries). Returns whether
    the libc can."""
    if not _malloc_trim():
        return False
    opt = engine.optimizer   # DeepSpeed's ZeRO / bf16 wrapper, or torch's AdamW at ZeRO-0 in fp32
    inner = opt.step

    def step(*a, **k):
        release()
        try:
            return inner(*a, **k)
        finally:
            release()
    opt.step = step   # an instance attribute: both engines call self.optimizer.step()
    return True
