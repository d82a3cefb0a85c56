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
import queue
import threading
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch

from statex_dist.checkpoint.atomic import DIGEST, new_digest
from statex_dist.checkpoint.errors import CheckpointError
from statex_dist.checkpoint.tensor_files import file_location

DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64",
          torch.int64: "I64", torch.int32: "I32", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}


# Bytes a writer copies a non-contiguous piece through, a block of rows at a time: one buffer reused for
# the whole file costs no fresh (zero-filled) pages per tensor, as ``.contiguous()`` would.
BLOCK_BYTES = 16 << 20


def file_bytes(data: torch.Tensor, block: Optional[torch.Tensor]) -> Iterator:
    """The bytes of ``data`` in file order: a contiguous tensor as it is, a strided one (a dim-1 TP slice)
    gathered a block of rows at a time into ``block`` (uint8, at least one row), each chunk valid until
    the next is taken."""
    if data.is_contiguous() or data.dim() < 2:
        yield data.contiguous().reshape(-1).view(torch.uint8).numpy()
        return
    row = data[0].numel() * data.element_size()
    rows = block.numel() // row
    for start in range(0, data.shape[0], rows):
        part = data[start:start + rows]
        buf = block[:part.numel() * data.element_size()]
        buf.view(data.dtype).view(part.shape).copy_(part)
        yield buf.numpy()


def _pread_exact(source, buf, offset: int) -> None:
    if os.preadv(source.fd, [buf], offset) != len(buf):
        raise CheckpointError(f"{source.path}: ends before byte {offset + len(buf)}; the file was truncated while "
                              f"being read: copy or download it again")


def read_bytes(data: torch.Tensor, source, offset: int, block: torch.Tensor, staging: torch.Tensor) -> Iterator:
    """The bytes of ``data`` in file order, read from the file it is mapped from (``source``, a SafetensorsFile,
    and ``offset`` of its first element: ``file_location``) with pread instead of through the mapping. ``data``
    is contiguous, or 2-D with unit column stride (a dim-1 TP slice: whole rows are read into ``staging`` a
    block at a time and their columns gathered into ``block``). Each chunk is valid until the next is taken."""
    item = data.element_size()
    if data.is_contiguous():
        n, buf = data.numel() * item, block.numpy()
        for o in range(0, n, len(buf)):
            chunk = buf[:min(len(buf), n - o)]
            _pread_exact(source, chunk, offset + o)
            yield chunk
        return
    (rows, cols), stride = data.shape, data.stride(0)
    per = max(1, len(staging) // (stride * item))
    for r0 in range(0, rows, per):
        r = min(per, rows - r0)
        k = ((r - 1) * stride + cols) * item
        _pread_exact(source, staging.numpy()[:k], offset + r0 * stride * item)
        src = staging[:k].view(data.dtype).as_strided((r, cols), (stride, 1))
        out = block[:r * cols * item]
        out.view(data.dtype).view(r, cols).copy_(src)
        yield out.numpy()


class StreamingSafetensorsWriter:
    """Write ``entries`` [(name, dtype, shape), ...] in that order: ``write(name, tensor)`` each, then ``close()``.

    Reading, gathering strided slices, hashing and writing run on a background thread (all release the GIL),
    so the caller reads and transforms the next tensor meanwhile, and the writers of several files hash
    in parallel; a short queue bounds the memory held in flight.
    """

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
        self.digest = new_digest()  # hashed as written: the manifest needs no second read of the file
        self.size = 0
        self._block: Optional[torch.Tensor] = None
        self._staging: Optional[torch.Tensor] = None   # whole source rows, read for a dim-1 slice
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()
        self._emit(len(raw).to_bytes(8, "little"))
        self._emit(raw)
        self._next = 0

    def _drain(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    for chunk in self._chunks(data):
                        # write first: the write faults a mapped source in far cheaper than a read does
                        # (hashing first made the pair cost 1.8x the CPU on a 2.7 GB file)
                        self._fh.write(chunk)
                        self.digest.update(chunk)
                except BaseException as e:  # reported to the caller at the next write or close
                    self._error = e

    def _chunks(self, data):
        if not isinstance(data, torch.Tensor):
            return [data]
        loc = file_location(data)
        if loc is not None and (data.is_contiguous() or (data.dim() == 2 and data.stride(1) == 1)):
            row = (data.stride(0) if data.dim() == 2 else 1) * data.element_size()
            return read_bytes(data, *loc, self._buffer("_block", row), self._buffer("_staging", row))
        if not data.is_contiguous() and data.dim() > 1:
            self._buffer("_block", data[0].numel() * data.element_size())
        return file_bytes(data, self._block)

    def _buffer(self, attr: str, row: int) -> torch.Tensor:
        """The writer's reused byte buffer ``attr``, grown to hold at least one ``row`` of bytes."""
        buf = getattr(self, attr)
        if buf is None or buf.numel() < row:
            buf = torch.empty(max(BLOCK_BYTES, row), dtype=torch.uint8)
            setattr(self, attr, buf)
        return buf

    def _emit(self, data) -> None:
        if self._error is not None:
            raise self._error
        self.size += data.numel() * data.element_size() if isinstance(data, torch.Tensor) else len(data)
        self._queue.put(data)

    def write(self, name: str, tensor: torch.Tensor | Sequence[torch.Tensor]) -> None:
        """Append one tensor, or the pieces whose concatenation along dim 0 is the tensor (no copy made: the
        writer's thread reads them later, so they must not change until ``close()``)."""
        if self._next >= len(self._order) or self._order[self._next] != name:
            want = self._order[self._next] if self._next < len(self._order) else "nothing"
            raise RuntimeError(f"{self.path}: expected tensor {want!r} next, got {name!r}")
        pieces = [tensor] if isinstance(tensor, torch.Tensor) else list(tensor)
        dtype, shape = self._spec[name]
        rows = sum(p.shape[0] for p in pieces) if shape else 1
        if any(p.dtype != dtype or tuple(p.shape[1:]) != shape[1:] for p in pieces) or (shape and rows != shape[0]):
            found = [list(p.shape) for p in pieces]
            raise RuntimeError(f"{self.path}: tensor {name!r} is {pieces[0].dtype} {found}, "
                               f"the header says {dtype} {list(shape)}")
        for p in pieces:
            if p.numel():
                self._emit(p.detach().cpu())
        self._next += 1

    def _finish(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def close(self) -> dict:
        """Finish the file; returns its manifest entry {size, <DIGEST>}."""
        if self._next != len(self._order):
            self.abort()
            raise RuntimeError(f"{self.path}: {len(self._order) - self._next} tensors were never written")
        self._finish()
        if self._error is not None:
            self._fh.close()
            raise self._error
        # No fsync: the folder appears by rename only once complete, and a file torn by a machine crash is
        # caught by the manifest's sizes and digests on load; forcing writeback would triple the wall time.
        self._fh.close()
        return {"size": self.size, DIGEST: self.digest.hexdigest()}

    def abort(self) -> None:
        if self._thread.is_alive():
            self._finish()
        self._fh.close()
