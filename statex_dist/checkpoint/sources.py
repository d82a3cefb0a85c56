"""Where full tensors come from: a Hugging Face folder or this project's sharded checkpoint.

Both give tensors by the models' internal names at their checkpoint shape (the embedding padded to the
checkpoint's own multiple, never to a TP size), so resharding, expansion and export need not care which.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from statex_dist import archs
from statex_dist.checkpoint.errors import CheckpointError
from statex_dist.checkpoint.hf_format import HFFormat
from statex_dist.checkpoint.hf_load import check_tensor, checkpoint_shape, find_tensor, read_hf_config
from statex_dist.checkpoint.sharded import ShardedCheckpoint, is_sharded
from statex_dist.checkpoint.tensor_files import TensorReader, read_json
from statex_dist.models import specs_for


class HFSource:
    """A Hugging Face folder (fla GLA, mamba_ssm Mamba2, transformers Mamba2)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.fmt, self.config = read_hf_config(folder)
        self.hf_config = read_json(self.folder / "config.json")
        self.reader = TensorReader(folder)
        self._names = {n: find_tensor(self.reader, self.fmt, n, self.config) for n in specs_for(self.config, 1)}
        used = set(self._names.values())
        extra = sorted(k for k in self.reader.keys() if k not in used and not self.fmt.optional(k, self.config))
        if extra:
            raise CheckpointError(f"{self.folder}: tensors the config does not describe: {extra[:8]}")

    def names(self) -> list[str]:
        return list(self._names)

    def dtype(self, name: str) -> torch.dtype:
        return self.reader.dtype(self._names[name])

    def get(self, name: str) -> torch.Tensor:
        hf = self._names[name]
        check_tensor(self.reader, hf, checkpoint_shape(self.config, name), self.folder)
        return self.reader.get(hf)

    def file_of(self, name: str) -> Path:
        return self.reader.file_of(self._names[name])


def open_source(path: str | os.PathLike):
    """A sharded checkpoint when the folder holds this project's manifest, else a Hugging Face folder."""
    path = Path(path)
    if is_sharded(path):
        return ShardedCheckpoint(path)
    return HFSource(path)


def hf_origin(src) -> tuple[type[HFFormat], Optional[dict]]:
    """The Hugging Face format and config.json an export of ``src`` (an HF folder or a sharded checkpoint,
    which records its origin in its manifest) writes back: the source's own, else the architecture's
    default format (its first) with a fresh config."""
    if isinstance(src, HFSource):
        return src.fmt, src.hf_config
    fmt = hf_format_named(src.hf_format_name) if src.hf_format_name else archs.of(src.config).default_format
    return fmt, src.hf_config


def hf_format_named(name: str) -> type[HFFormat]:
    for fmt in archs.FORMATS:
        if fmt.name == name:
            return fmt
    raise CheckpointError(f"unknown Hugging Face format {name!r}; known: {[f.name for f in archs.FORMATS]}")
