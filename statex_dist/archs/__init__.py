"""The architectures, one record each (statex_dist.archs.record.Architecture), one folder each.

A new architecture is a new folder and one more entry in ``NAMES`` (docs/adding-an-architecture.md).

The registry imports no architecture until one is asked for: an architecture's folder builds on the generic
packages (models, checkpoint, statex), which ask the registry about a config, so the registry must not
depend on the folders for those packages' imports to stay free of cycles (the plugin pattern of
``transformers``' auto classes). Importing an architecture imports its config, layout, formats,
initialisation and StateX rules, not its model (megatron-core), so the checkpoint tools start without the
model stack.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping

from statex_dist.archs.record import Architecture

NAMES = ("gla", "mamba2", "gdn")   # each a folder statex_dist/archs/<name>/ whose ARCH is its record
DEFAULT = "gla"   # the main job's and the tools' architecture when none is named


def get(name: str) -> Architecture:
    """The record of architecture ``name``; ValueError naming the known ones."""
    if name not in NAMES:
        known = [repr(n) for n in NAMES]
        expected = known[-1] if len(known) == 1 else f"{', '.join(known[:-1])} or {known[-1]}"
        raise ValueError(f"unknown architecture {name!r}: expected {expected}")
    return importlib.import_module(f"{__name__}.{name}").ARCH


def of(config) -> Architecture:
    """The record of a model config's architecture (``config.arch``)."""
    return get(config.arch)


class _Registry(Mapping):
    """``{name: Architecture}`` in ``NAMES`` order, each imported when first read."""

    def __getitem__(self, name: str) -> Architecture:
        if name not in NAMES:
            raise KeyError(name)
        return get(name)

    def __iter__(self):
        return iter(NAMES)

    def __len__(self) -> int:
        return len(NAMES)


ARCHS: Mapping[str, Architecture] = _Registry()


def __getattr__(name: str):
    if name == "FORMATS":
        # every architecture's Hugging Face formats, in the order a folder's config.json is matched against them
        return tuple(f for a in ARCHS.values() for f in a.formats)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ARCHS", "DEFAULT", "FORMATS", "NAMES", "Architecture", "get", "of"]
