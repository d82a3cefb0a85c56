"""Reading tensors from a Hugging Face folder one at a time, and writing them atomically.

safetensors first (single file or sharded with ``model.safetensors.index.json``); ``pytorch_model.bin``
only through ``torch.load(weights_only=True)``, which refuses pickled code.
"""
from __future__ import annotations

import json
import mmap
import os
import weakref
from pathlib import Path
from typing import Iterator, Optional

import torch

from statex_dist.checkpoint.errors import CheckpointError

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


_ST_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}


# Where each live mapping of SafetensorsFile.get lies in its file: storage data_ptr -> (file, file offset of
# the storage's first byte). A writer handed an unchanged view of one reads its bytes with pread into a buffer
# of its own (``file_location``) instead of through the mapping: on a 1 GB file in the page cache, writing from
# the mapping cost 1.5-2.9 s of CPU (a fault per touched page of a private mapping), pread + write 0.45-0.55 s.
_MAPPED: dict[int, tuple["SafetensorsFile", int]] = {}


def file_location(t: torch.Tensor) -> Optional[tuple["SafetensorsFile", int]]:
    """(file, byte offset of ``t``'s first element in it) when ``t`` is a view of a tensor that
    ``SafetensorsFile.get`` mapped and nothing has written into (its version counter is still 0: a write
    through any view of a copy-on-write mapping would make the file's bytes stale); else None."""
    if t.device.type != "cpu" or t._version != 0:
        return None
    base = t.untyped_storage().data_ptr()
    entry = _MAPPED.get(base)
    if entry is None:
        return None
    f, offset = entry
    return f, offset + t.data_ptr() - base


class SafetensorsFile:
    """One safetensors file, each tensor mapped on its own.

    ``safe_open`` memory-maps the whole file, and every page a read touches stays in the process's RSS
    until the handle closes: streaming a 3 GB checkpoint through it would cost 3 GB. A mapping per tensor
    goes when its last view does, so the peak stays at the tensors in use; and unlike reading into a new
    buffer it neither copies the page cache nor zero-fills fresh memory (a fifth of a reshard's CPU).
    The mapping is copy-on-write: writing into a returned tensor never touches the file.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        try:
            with open(self.path, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                if n <= 0 or 8 + n > size:
                    raise ValueError(f"header length {n} does not fit in {size} bytes")
                header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError) as e:
            raise CheckpointError(
                f"{self.path}: unreadable safetensors file ({e}); it is truncated or corrupt: download or copy it again"
            ) from e
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.entries = header
        for key, e in header.items():
            self._check_entry(key, e)
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
        if self.base + end > size:
            raise CheckpointError(
                f"{self.path}: truncated: the header describes {self.base + end} bytes but the file has {size}; "
                f"copy or download it again")
        self._fd = os.open(self.path, os.O_RDONLY)

    def _check_entry(self, key: str, e) -> None:
        """A header entry that cannot be read as a tensor: named here, not as a KeyError deep in a load."""
        try:
            dtype, shape, (lo, hi) = _ST_DTYPES.get(e["dtype"]), [int(d) for d in e["shape"]], e["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{self.path}: tensor {key!r} has a malformed header entry {e!r}; the file is "
                                  f"corrupt") from None
        if dtype is None:
            raise CheckpointError(f"{self.path}: tensor {key!r} has dtype {e['dtype']}, which this reader does not "
                                  f"know (known: {sorted(_ST_DTYPES)})")
        if hi - lo != torch.Size(shape).numel() * dtype.itemsize:
            raise CheckpointError(f"{self.path}: tensor {key!r} of shape {shape} and dtype {e['dtype']} needs "
                                  f"{torch.Size(shape).numel() * dtype.itemsize} bytes, its header gives {hi - lo}; "
                                  f"the file is corrupt")

    @property
    def fd(self) -> int:
        return self._fd

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self.entries[key]["shape"])

    def dtype(self, key: str) -> torch.dtype:
        return _ST_DTYPES[self.entries[key]["dtype"]]

    def get(self, key: str) -> torch.Tensor:
        e = self.entries[key]
        lo, hi = e["data_offsets"]
        dtype = _ST_DTYPES[e["dtype"]]
        if hi == lo:
            return torch.empty(e["shape"], dtype=dtype)
        start = self.base + lo
        if os.fstat(self._fd).st_size < start + hi - lo:  # cut since opened: a mapping would crash on it
            raise CheckpointError(f"{self.path}: tensor {key!r} ends early; the file is truncated")
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(self._fd, start - aligned + hi - lo, access=mmap.ACCESS_COPY, offset=aligned)
        # Starts reading the whole tensor from disk at once, instead of a page fault at a time.
        mapped.madvise(mmap.MADV_WILLNEED)
        raw = torch.frombuffer(mapped, dtype=torch.uint8, count=hi - lo, offset=start - aligned)
        ptr = raw.untyped_storage().data_ptr()
        _MAPPED[ptr] = (self, start)                   # the entry keeps this file (its fd) open while mapped
        weakref.finalize(mapped, _MAPPED.pop, ptr, None)
        return raw.view(dtype).reshape(e["shape"])

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)


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
            h = SafetensorsFile(path)
            self._handles[path] = h
            return h.keys()
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # torch raises several types for truncated or unsafe pickles
            raise CheckpointError(f"{path}: cannot be read with torch.load(weights_only=True) ({_load_reason(e)}); "
                                  f"a weights file must be a plain state dict of tensors: re-save it with "
                                  f"torch.save(model.state_dict()) or as safetensors") from e
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            what = type(sd).__name__ if not isinstance(sd, dict) else next(
                f"a {type(v).__name__} under {k!r}" for k, v in sd.items() if not isinstance(v, torch.Tensor))
            raise CheckpointError(f"{path}: not a plain state dict of tensors (it holds {what}); save "
                                  f"model.state_dict() or convert the file to safetensors")
        self._bin[path] = sd
        return list(sd.keys())

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
        return self._handles[path].get(key)

    def shape(self, key: str) -> tuple[int, ...]:
        path = self._where[key]
        if path in self._bin:
            return tuple(self._bin[path][key].shape)
        return self._handles[path].shape(key)

    def dtype(self, key: str) -> torch.dtype:
        path = self._where[key]
        if path in self._bin:
            return self._bin[path][key].dtype
        return self._handles[path].dtype(key)

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        for k in self._where:
            yield k, self.get(k)


def _load_reason(e: Exception) -> str:
    """torch.load's reason in one line, without its advice to retry with weights_only=False (which would run
    whatever code the pickle holds)."""
    paragraphs = [" ".join(p.split()) for p in str(e).split("\n\n") if p.strip()]
    if len(paragraphs) > 1 and paragraphs[0].startswith("Weights only load failed"):
        return paragraphs[1]
    return paragraphs[0] if paragraphs else type(e).__name__


def read_json(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"{path.parent}: no {path.name}; a checkpoint folder needs its config file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
