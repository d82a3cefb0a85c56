"""statex_dist/training/host_memory.py: a CPU run's freed tensors go back to the system.

Each case runs in a fresh interpreter (malloc's settings are per process and cannot be undone): glibc's default
first raises its mmap threshold to 16 MiB (as a run does once it frees a large block), then 200 tensors of
2 MiB are made and all but every 8th freed, the pattern of a backward releasing activations. With glibc's
default they stay in its heap (the RSS keeps ~400 MB); with ``map_large_blocks`` each is its own mapping and
the RSS falls back to the 25 kept (50 MB).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.train_helpers import ROOT

SCRIPT = """
import torch
from statex_dist.training import host_memory, memory_report
took = host_memory.map_large_blocks() if {mapped} else None
big = torch.ones(4 << 20); del big               # 16 MiB freed: glibc's dynamic threshold grows to it
base = memory_report.rss()
xs = [torch.ones(1 << 19) for _ in range(200)]    # 2 MiB each
keep = xs[::8]; del xs
print(took, (memory_report.rss() - base) / 1e6)
"""


def _run(mapped: bool, env=None) -> tuple[str, float]:
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(mapped=mapped)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, **(env or {})))
    assert r.returncode == 0, r.stderr[-2000:]
    took, mb = r.stdout.split()
    return took, float(mb)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_return_to_the_system():
    _, kept_default = _run(False)
    took, kept_mapped = _run(True)
    assert took == "True"
    assert kept_default > 300, kept_default     # 400 MB freed, kept in the heap
    assert kept_mapped < 120, kept_mapped       # the 50 MB still referenced, and the interpreter's noise
    took, _ = _run(True, {"MALLOC_MMAP_THRESHOLD_": "33554432"})
    assert took == "False"                      # the user's own threshold is left as set
