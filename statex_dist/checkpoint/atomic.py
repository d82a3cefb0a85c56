"""Output folders that appear whole or not at all, and manifests that prove it."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import xxhash

from statex_dist.checkpoint.errors import CheckpointError

MANIFEST = "manifest.json"
# A checkpoint manifest's per-file digest. It guards against torn, truncated and bit-rotted files, not against
# tampering, so a non-cryptographic 128-bit hash does the job: XXH3-128 runs at about 30 GB/s on one core where
# SHA-256 runs at 1, which was a quarter of a reshard's CPU. Manifests written before list "sha256"; those are
# still verified with it. (Data shard manifests keep SHA-256: they are written once, by make_shards.py.)
DIGEST = "xxh3_128"
DIGESTS = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}


@contextlib.contextmanager
def atomic_dir(dst: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``dst``; rename it to ``dst`` when the block succeeds.

    An existing ``dst`` is refused unless ``overwrite``; on any error the temporary folder is removed and
    ``dst`` is left as it was. With ``overwrite`` the old folder is swapped out by rename and deleted last.
    """
    dst = Path(dst).absolute()
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst}: already exists; pass --overwrite to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    move_into_place(tmp, dst)


def move_into_place(src: Path, dst: Path) -> None:
    """Rename the finished folder ``src`` to ``dst``; an existing ``dst`` is swapped out by rename and deleted last."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """``path`` holds ``data`` whole or keeps what it held: written beside it, then renamed over it. No fsync:
    this guards against a killed process (the rename is atomic), not against a power cut."""
    path = Path(path)
    tmp = path.parent / f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_digest():
    """An incremental hasher of the manifests' digest (``.update(bytes)``, ``.hexdigest()``)."""
    return DIGESTS[DIGEST]()


def sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def file_digest(path: Path, algo: str = DIGEST) -> str:
    h = DIGESTS[algo]()
    buf = bytearray(1 << 20)  # reused: a new buffer per read would fault in fresh pages every time
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def digest_many(paths: list[Path], algos: list[str] | None = None) -> list[str]:
    """The digest of each file (``algos[i]``, default DIGEST), the files on parallel threads: hashlib and
    xxhash release the GIL, so a checkpoint of several shards hashes at the speed of all cores."""
    algos = algos or [DIGEST] * len(paths)
    if len(paths) < 2:
        return [file_digest(p, a) for p, a in zip(paths, algos)]
    with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1)) as pool:
        return list(pool.map(file_digest, paths, algos))


def file_table(folder: Path, known: dict[str, dict] | None = None) -> dict[str, dict]:
    """Size and digest of every file below ``folder`` except the manifest; ``known`` entries (hashed while
    they were written) are taken as they are."""
    known = known or {}
    files = {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    todo = [rel for rel in files if rel not in known]
    hashed = dict(zip(todo, digest_many([files[rel] for rel in todo])))
    return {rel: known.get(rel) or {"size": p.stat().st_size, DIGEST: hashed[rel]} for rel, p in files.items()}


def write_manifest(folder: Path, body: dict, known: dict[str, dict] | None = None) -> dict:
    body = dict(body, files=file_table(folder, known))
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return body


def verify_manifest(folder: Path, deep: bool = True) -> dict:
    """Check every listed file's size (and digest when ``deep``); name the first file that differs."""
    path = folder / MANIFEST
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable manifest ({e}); the checkpoint was not written completely") from e
    listed = body.get("files", {})
    for rel, info in listed.items():
        p = folder / rel
        if not p.exists():
            raise CheckpointError(f"{p}: listed in {path.name} but missing; copy the whole checkpoint folder")
        if p.stat().st_size != info["size"]:
            raise CheckpointError(f"{p}: {p.stat().st_size} bytes, the manifest says {info['size']}; the file is "
                                  f"truncated or was changed")
    if deep:  # sizes first: a missing or short file is named without hashing gigabytes
        algos = [next((a for a in DIGESTS if a in info), None) for info in listed.values()]
        for rel, algo in zip(listed, algos):
            if algo is None:
                raise CheckpointError(f"{folder / rel}: {path.name} lists no digest for it (expected one of "
                                      f"{sorted(DIGESTS)}); the manifest is damaged: write the checkpoint again")
        for (rel, info), algo, digest in zip(listed.items(), algos,
                                             digest_many([folder / rel for rel in listed], algos)):
            if digest != info[algo]:
                raise CheckpointError(f"{folder / rel}: {algo} differs from {path.name}; the file is corrupt or "
                                      f"was changed")
    return body
