"""A safetensors file written one tensor at a time.

``safetensors.torch.save_file`` needs every tensor of a file in memory at once; a 1.3B checkpoint's
shards would then cost their whole size in RAM. The format is a JSON header of names, dtypes, shapes and
byte offsets followed by raw little-endian data, so when the shapes are known in advance (they are: from
the ShardSpecs) the header goes first and each tensor's bytes follow as it is produced. Files written
here are read back by ``safetensors.safe_open`` in the tests.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional, Sequence

import torch

DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


class StreamingSafetensorsWriter:
    """Write ``entries`` [(name, dtype, shape), ...] in that order: ``write(name, tensor)`` each, then ``close()``."""

    def __init__(self, path: str | os.PathLike, entries: Sequence[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata: Optional[dict[str, str]] = None):
        self.path = Path(path)
        self._order = [e[0] for e in entries]
        self._spec = {name: (dtype, tuple(shape)) for name, dtype, shape in entries}
        header, offset = {}, 0
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        for name, dtype, shape in entries:
            n = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
            offset += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data section 8-byte aligned, as safetensors writes it
        self._fh = open(self.path, "wb")
        self._fh.write(len(raw).to_bytes(8, "little"))
        self._fh.write(raw)
        self._next = 0

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self._next >= len(self._order) or self._order[self._next] != name:
            want = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise RuntimeError(f"{self.path}: expected tensor {want!r} next, got {name!r}")
        dtype, shape = self._spec[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != shape:
            raise RuntimeError(f"{self.path}: tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, "
                               f"the header says {dtype} {list(shape)}")
        t = tensor.detach().contiguous().cpu()
        self._fh.write(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            raise RuntimeError(f"{self.path}: {len(self._order) - self._next} tensors were never written")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def abort(self) -> None:
        self._fh.close()
