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

from statex_dist.checkpoint.atomic import atomic_write, sha256
from statex_dist.data import remote
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


def numpy_dtype(dtype_name: str) -> np.dtype:
    return np.dtype(_DTYPES[dtype_name][0])


def write_manifest(folder: Path, *, seq_len: int, dtype: str, tokenizer: dict, shards: list[dict],
                   total_tokens: int, loss_mask: bool = False, **extra) -> dict:
    """Write ``folder/manifest.json`` (by rename) and return it: the fields every reader needs, then ``extra``
    (what the writer records about itself: documents, inputs, options, a task's parameters)."""
    manifest = {"format": FORMAT, "seq_len": seq_len, "sample_tokens": seq_len + 1, "token_dtype": dtype,
                "sample_field": sample_field(dtype), **({"loss_mask": True} if loss_mask else {}),
                "tokenizer": tokenizer, "total_samples": sum(s["samples"] for s in shards),
                "total_tokens": total_tokens, **extra, "shards": shards}
    atomic_write(Path(folder) / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode())
    return manifest


def encode_tokens(window: np.ndarray, dtype_name: str) -> bytes:
    return np.ascontiguousarray(window, dtype=_DTYPES[dtype_name][0]).tobytes()


@dataclass(frozen=True)
class ShardInfo:
    path: Path          # a remote.Location for a folder on a server
    samples: int
    bytes: int
    sha256: str

    @property
    def url(self) -> str:
        """What the reader opens: the local path, an http(s) URL or a pipe: command."""
        return str(self.path)


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


_BLOCK = 512  # a tar header, and the unit its data is padded to


def _tar_header(fd: int, offset: int):
    """(member name, data size) of the tar header at ``offset``; None at the end-of-archive block; raises
    ValueError where no header is (the offset is inside data, or the file ends)."""
    import os
    h = os.pread(fd, _BLOCK, offset)
    if len(h) < _BLOCK:
        raise ValueError(f"the file ends at byte {offset + len(h)}")
    if h == bytes(_BLOCK):
        return None
    stored = h[148:156].split(b"\0")[0].strip()
    if not stored or int(stored, 8) != sum(h[:148]) + 8 * 32 + sum(h[156:]):  # checksum: its field as spaces
        raise ValueError(f"no tar header at byte {offset}")
    return h[:100].split(b"\0")[0].decode(errors="replace"), int(h[124:136].split(b"\0")[0].strip() or b"0", 8)


def _sample_headers(fd: int, offset: int, n: int) -> list[tuple[str, int]]:
    out = []
    for _ in range(n):
        head = _tar_header(fd, offset)
        if head is None:
            raise ValueError(f"the archive ends at byte {offset}")
        out.append(head)
        offset += _BLOCK + -(-head[1] // _BLOCK) * _BLOCK
    return out


def _check_layout(shard: ShardInfo, m: Manifest, mpath: Path) -> None:
    """The tar holds the manifest's sample count, each sample the members the manifest promises at their sizes.

    The writer gives every sample the same members at the same sizes, so sample i's headers sit at i times
    one sample's span: reading the first sample's headers, the last sample's and the end-of-archive block
    (a few reads, whatever the shard's size) proves the count, the token dtype and that no member is lost,
    before any step of a run.
    """
    import os
    want = {m.field: (m.seq_len + 1) * np.dtype(_DTYPES[m.dtype_name][0]).itemsize}
    if m.loss_mask:
        want[MASK_FIELD] = m.seq_len
    span = len(want) * _BLOCK + sum(-(-n // _BLOCK) * _BLOCK for n in want.values())
    fix = "re-create the folder with tools/make_shards.py"
    fd = os.open(shard.path, os.O_RDONLY)
    try:
        try:
            first = _sample_headers(fd, 0, len(want))
        except ValueError as e:
            raise ShardError(f"shard {shard.path}: not a readable tar ({e}); {fix}") from None
        key = first[0][0].partition(".")[0]
        members = {name.partition(".")[2]: size for name, size in first if name.partition(".")[0] == key}
        for member, size in want.items():
            if member not in members:
                raise ShardError(f"shard {shard.path}: sample {key} has no '{member}' member (has {sorted(members)}); "
                                 f"{mpath} promises {sorted(want)} per sample ({m.dtype_name} tokens); {fix}")
            if members[member] != size:
                raise ShardError(f"shard {shard.path}: member {key}.{member} is {members[member]} bytes, {mpath} "
                                 f"promises {size} (seq_len {m.seq_len}, {m.dtype_name}); {fix}")
        try:
            last = _sample_headers(fd, (shard.samples - 1) * span, len(want))
            end = _tar_header(fd, shard.samples * span)
            ok = end is None and sorted(n.partition(".")[2] for n, _ in last) == sorted(want)
        except ValueError:
            ok = False
        if not ok:
            raise ShardError(f"shard {shard.path} does not hold the {shard.samples} samples of {sorted(want)} that "
                             f"{mpath} lists (a sample count that is wrong or a member that is missing); {fix}")
    finally:
        os.close(fd)


def check_shards(shard_dir, verify_hashes: bool = False, layout: bool = True) -> Manifest:
    """Read ``shard_dir/manifest.json`` and check that every shard file is there with its recorded size.

    Performs no collective, so a training job calls it before creating process groups: a rank that lacks
    the data fails at once instead of leaving its peers waiting in a collective. A folder on a server
    (``remote.py``: http(s)://, pipe:) is checked by its manifest alone; its samples as they are decoded.
    ``layout`` also checks each tar against the manifest (:func:`_check_layout`: a few reads a shard);
    ``verify_hashes`` compares each shard's sha256 (reads every byte).
    """
    if not str(shard_dir or ""):
        raise MissingDataError("no shard folder given (data.train, data.valid or --data); make one with "
                               "tools/make_shards.py")
    if remote.is_remote(shard_dir):
        folder = remote.folder(str(shard_dir))
        mpath = folder / MANIFEST
        text = remote.fetch(mpath)
    else:
        folder = Path(shard_dir)
        if not folder.is_dir():
            raise MissingDataError(f"shard folder {folder} does not exist; create it with tools/make_shards.py")
        mpath = folder / MANIFEST
        if not mpath.is_file():
            raise MissingDataError(f"{mpath} is missing: {folder} is not a shard folder written by "
                                   f"tools/make_shards.py (or the write did not finish)")
        text = mpath.read_bytes()
    try:
        raw = json.loads(text)
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
    if remote.is_remote(shard_dir):  # streamed: each sample is checked as it is decoded
        return m
    for s in shards:
        if not s.path.is_file():
            raise MissingDataError(f"shard {s.path} listed in {mpath} is missing")
        size = s.path.stat().st_size
        if s.samples <= 0:
            raise ShardError(f"shard {s.path} is empty (the manifest lists 0 samples); re-create the folder")
        if size != s.bytes:
            raise ShardError(f"shard {s.path} is {size} bytes, {mpath} says {s.bytes}: truncated or replaced; "
                             f"re-create it with tools/make_shards.py")
        if verify_hashes and sha256(s.path) != s.sha256:
            raise ShardError(f"shard {s.path}: sha256 differs from {mpath}; the shard is corrupt")
        if layout:
            _check_layout(s, m, mpath)
    return m
