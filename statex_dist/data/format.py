"""The on-disk format of a shard folder, and the checks a reader runs before touching a shard.

A shard folder holds ``shard-000000.tar`` ... (webdataset tars) and ``manifest.json``. Each sample of a tar
is one member ``<key>.tokens.u16`` (or ``.tokens.i32``): ``seq_len + 1`` token ids, raw little-endian,
uint16 when the vocabulary fits (vocab_size <= 65536), else int32. ``<key>`` is the sample's global index
in the corpus, zero-padded to 10 digits.

Why ``seq_len + 1``: sample ``i`` is tokens ``[i*T, i*T + T]`` of the EOS-joined corpus (stride ``T``,
window ``T + 1``), so ``input_ids = window[:-1]`` and ``labels = window[1:]`` are both ``T`` long and every
next-token transition of the corpus is a label exactly once (neighbouring windows share one token).

Task shards (``statex_dist/data/tasks.py``: recall tasks such as MQAR) set ``"loss_mask": true`` in the
manifest and add a member ``<key>.mask.u8`` per sample: ``seq_len`` bytes, 1 where the label counts in the
loss, 0 where the loader sets it to -100 (MQAR counts only the answers to its queries).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from statex_dist.data.errors import DataError, MissingDataError, ShardError

FORMAT = "statex-dist-shards/1"
MANIFEST = "manifest.json"
SHARD_PATTERN = "shard-%06d.tar"
KEY_DIGITS = 10
_DTYPES = {"uint16": ("<u2", "tokens.u16"), "int32": ("<i4", "tokens.i32")}
MASK_FIELD = "mask.u8"


def token_dtype_name(vocab_size: int) -> str:
    """uint16 halves the bytes of int32 and holds every id of a vocabulary of up to 65536 tokens."""
    return "uint16" if vocab_size <= 1 << 16 else "int32"


def sample_field(dtype_name: str) -> str:
    """The tar member suffix (webdataset field) that holds a sample's tokens."""
    return _DTYPES[dtype_name][1]


def encode_tokens(window: np.ndarray, dtype_name: str) -> bytes:
    return np.ascontiguousarray(window, dtype=_DTYPES[dtype_name][0]).tobytes()


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    samples: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a loader needs from ``manifest.json``; ``raw`` is the whole file."""
    dir: Path
    seq_len: int
    dtype_name: str
    vocab_size: int
    eos_id: int
    shards: tuple[ShardInfo, ...]
    total_samples: int
    raw: dict
    loss_mask: bool = False

    @property
    def field(self) -> str:
        return sample_field(self.dtype_name)

    @property
    def fingerprint(self) -> str:
        """Identifies the shard set (names, counts, sizes, hashes): a saved loader position is only valid for it."""
        rows = [(s.path.name, s.samples, s.bytes, s.sha256) for s in self.shards]
        return hashlib.sha256(json.dumps([self.seq_len, self.dtype_name, rows]).encode()).hexdigest()[:16]

    def decode(self, sample: dict) -> np.ndarray:
        """A webdataset sample (dict of raw member bytes) -> its ``[seq_len + 1]`` token ids, checked."""
        url, key = sample.get("__url__", "?"), sample.get("__key__", "?")
        data = sample.get(self.field)
        if data is None:
            fields = sorted(k for k in sample if not k.startswith("__"))
            raise ShardError(f"shard {url}: sample {key} has no '{self.field}' member (has {fields}); the shard "
                             f"does not match {self.dir / MANIFEST}; re-create it with tools/make_shards.py")
        want = (self.seq_len + 1) * np.dtype(_DTYPES[self.dtype_name][0]).itemsize
        if len(data) != want:
            raise ShardError(f"shard {url}: sample {key} holds {len(data)} bytes, expected {want} "
                             f"(seq_len {self.seq_len} + 1 tokens of {self.dtype_name}); the shard is corrupt")
        tokens = np.frombuffer(data, dtype=_DTYPES[self.dtype_name][0])
        top = int(tokens.max())
        if top >= self.vocab_size or int(tokens.min()) < 0:
            raise ShardError(f"shard {url}: sample {key} holds token id {top}, outside the vocabulary of "
                             f"{self.vocab_size}; the shard is corrupt")
        return tokens

    def decode_mask(self, sample: dict):
        """The sample's loss mask ``[seq_len]`` (bool), or None for a shard set without masks."""
        if not self.loss_mask:
            return None
        data = sample.get(MASK_FIELD)
        if data is None or len(data) != self.seq_len:
            got = "no" if data is None else f"a {len(data)}-byte"
            raise ShardError(f"shard {sample.get('__url__', '?')}: sample {sample.get('__key__', '?')} has {got} "
                             f"'{MASK_FIELD}' member, {self.dir / MANIFEST} promises {self.seq_len} bytes; the shard "
                             f"is corrupt")
        return np.frombuffer(data, dtype=np.uint8).astype(bool)


def _sha256(path: Path) -> str:
    from statex_dist.checkpoint.atomic import sha256
    return sha256(path)


def check_shards(shard_dir, verify_hashes: bool = False) -> Manifest:
    """Read ``shard_dir/manifest.json`` and check that every shard file is there with its recorded size.

    Touches only local files (no collective), so a training job calls it before creating process groups:
    a rank that lacks the data fails at once instead of leaving its peers waiting in a collective.
    ``verify_hashes`` also compares each shard's sha256 (reads every byte).
    """
    folder = Path(shard_dir)
    if not folder.is_dir():
        raise MissingDataError(f"shard folder {folder} does not exist; create it with tools/make_shards.py")
    mpath = folder / MANIFEST
    if not mpath.is_file():
        raise MissingDataError(f"{mpath} is missing: {folder} is not a shard folder written by "
                               f"tools/make_shards.py (or the write did not finish)")
    try:
        raw = json.loads(mpath.read_text())
        if raw.get("format") != FORMAT:
            raise DataError(f"{mpath}: format {raw.get('format')!r}, expected {FORMAT!r}")
        tok = raw["tokenizer"]
        shards = tuple(ShardInfo(folder / s["file"], int(s["samples"]), int(s["bytes"]), s["sha256"])
                       for s in raw["shards"])
        m = Manifest(folder, int(raw["seq_len"]), raw["token_dtype"], int(tok["vocab_size"]), int(tok["eos_id"]),
                     shards, int(raw["total_samples"]), raw, bool(raw.get("loss_mask", False)))
        sample_field(m.dtype_name)
    except DataError:
        raise
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{mpath} is not a valid shard manifest ({type(e).__name__}: {e})") from e
    if not shards:
        raise DataError(f"{mpath} lists no shards")
    if sum(s.samples for s in shards) != m.total_samples:
        raise DataError(f"{mpath}: shard sample counts add up to {sum(s.samples for s in shards)}, "
                        f"total_samples says {m.total_samples}")
    for s in shards:
        if not s.path.is_file():
            raise MissingDataError(f"shard {s.path} listed in {mpath} is missing")
        size = s.path.stat().st_size
        if s.samples <= 0:
            raise ShardError(f"shard {s.path} is empty (the manifest lists 0 samples); re-create the folder")
        if size != s.bytes:
            raise ShardError(f"shard {s.path} is {size} bytes, {mpath} says {s.bytes}: truncated or replaced; "
                             f"re-create it with tools/make_shards.py")
        if verify_hashes and _sha256(s.path) != s.sha256:
            raise ShardError(f"shard {s.path}: sha256 differs from {mpath}; the shard is corrupt")
    return m
