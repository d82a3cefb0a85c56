"""The architectures, one record each (statex_dist.archs.record.Architecture), one folder each.

A new architecture is a new folder and one more entry in ``ARCHS`` (docs/adding-an-architecture.md).
Importing this package imports every architecture's config, layout, formats, initialisation and StateX
rules, not its model (megatron-core), so the checkpoint tools start without the model stack.
"""
from __future__ import annotations

from statex_dist.archs import gdn, gla, mamba2
from statex_dist.archs.record import Architecture

ARCHS: dict[str, Architecture] = {a.name: a for a in (gla.ARCH, mamba2.ARCH, gdn.ARCH)}
DEFAULT = "gla"   # the main job's and the tools' architecture when none is named
# every architecture's Hugging Face formats, in the order a folder's config.json is matched against them
FORMATS = tuple(f for a in ARCHS.values() for f in a.formats)


def get(name: str) -> Architecture:
    """The record of architecture ``name``; ValueError naming the known ones."""
    arch = ARCHS.get(name)
    if arch is None:
        known = [repr(n) for n in ARCHS]
        expected = known[-1] if len(known) == 1 else f"{', '.join(known[:-1])} or {known[-1]}"
        raise ValueError(f"unknown architecture {name!r}: expected {expected}")
    return arch


def of(config) -> Architecture:
    """The record of a model config's architecture (``config.arch``)."""
    return get(config.arch)


__all__ = ["ARCHS", "DEFAULT", "FORMATS", "Architecture", "get", "of"]
