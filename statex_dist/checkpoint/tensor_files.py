"""Reading tensors from a Hugging Face folder one at a time, and writing them atomically.

safetensors first (single file or sharded with ``model.safetensors.index.json``); ``pytorch_model.bin``
only through ``torch.load(weights_only=True)``, which refuses pickled code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from statex_dist.checkpoint.errors import CheckpointError

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


class TensorReader:
    """Lazy access to the tensors of a folder: ``keys()``, ``shape(key)``, ``get(key)``, ``file_of(key)``.

    safetensors files are memory-mapped and read one tensor at a time, so peak memory does not grow with
    the model; a ``.bin`` file is loaded whole (mmap where torch allows).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._where: dict[str, Path] = {}
        self._bin: dict[Path, dict[str, torch.Tensor]] = {}
        self._handles: dict[Path, object] = {}
        files = self._weight_files()
        if not files:
            raise CheckpointError(
                f"{self.folder}: no weights found (expected model.safetensors, {SAFETENSORS_INDEX}, "
                f"pytorch_model.bin or {BIN_INDEX})")
        for f in files:
            for k in self._keys_of(f):
                self._where[k] = f

    def _weight_files(self) -> list[Path]:
        f = self.folder
        for index in (SAFETENSORS_INDEX, BIN_INDEX):
            if (f / index).exists():
                try:
                    weight_map = json.loads((f / index).read_text())["weight_map"]
                except (json.JSONDecodeError, KeyError) as e:
                    raise CheckpointError(f"{f / index}: not a valid index file ({e}); re-save the checkpoint") from e
                return sorted({f / name for name in weight_map.values()})
        single = sorted(f.glob("*.safetensors"))
        if single:
            return single
        return [f / "pytorch_model.bin"] if (f / "pytorch_model.bin").exists() else []

    def _keys_of(self, path: Path) -> list[str]:
        if not path.exists():
            raise CheckpointError(f"{path}: listed in the index but missing; copy the whole checkpoint folder")
        if path.suffix == ".safetensors":
            try:
                h = safe_open(str(path), framework="pt")
            except (SafetensorError, OSError) as e:
                raise CheckpointError(
                    f"{path}: unreadable safetensors file ({e}); it is truncated or corrupt: download or copy it again"
                ) from e
            size = path.stat().st_size
            self._handles[path] = h
            self._check_extent(path, h, size)
            return list(h.keys())
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises several types for truncated or unsafe pickles
            raise CheckpointError(f"{path}: cannot be read with torch.load(weights_only=True): {e}") from e
        self._bin[path] = sd
        return list(sd.keys())

    @staticmethod
    def _check_extent(path: Path, handle, size: int) -> None:
        # safe_open validates the header; a file cut inside the data section is caught here, not later
        # when a tensor is read and the whole job has started.
        with open(path, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(header_len))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + header_len + end > size:
            raise CheckpointError(
                f"{path}: truncated: the header describes {8 + header_len + end} bytes but the file has {size}; "
                f"copy or download it again")

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def file_of(self, key: str) -> Path:
        return self._where[key]

    def get(self, key: str) -> torch.Tensor:
        path = self._where.get(key)
        if path is None:
            raise CheckpointError(f"{self.folder}: tensor {key!r} is missing from the checkpoint")
        if path in self._bin:
            return self._bin[path][key]
        try:
            return self._handles[path].get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: tensor {key!r} cannot be read ({e}); the file is corrupt") from e

    def shape(self, key: str) -> tuple[int, ...]:
        path = self._where[key]
        if path in self._bin:
            return tuple(self._bin[path][key].shape)
        return tuple(self._handles[path].get_slice(key).get_shape())

    def dtype(self, key: str) -> str:
        path = self._where[key]
        if path in self._bin:
            return str(self._bin[path][key].dtype).replace("torch.", "")
        return self._handles[path].get_slice(key).get_dtype()

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for k in self._where:
            yield k, self.get(k)


def read_json(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"{path.parent}: no {path.name}; a checkpoint folder needs its config file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write to ``path`` through a temporary file and a rename, so a crash never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
