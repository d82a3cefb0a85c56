"""Output folders that appear whole or not at all, and manifests that prove it."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from statex_dist.checkpoint.errors import CheckpointError

MANIFEST = "manifest.json"


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
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_table(folder: Path, known: dict[str, dict] | None = None) -> dict[str, dict]:
    """Size and sha256 of every file below ``folder`` except the manifest; ``known`` entries (hashed while
    they were written) are taken as they are."""
    known = known or {}
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_file() and p.name != MANIFEST:
            out[rel] = known.get(rel) or {"size": p.stat().st_size, "sha256": sha256(p)}
    return out


def write_manifest(folder: Path, body: dict, known: dict[str, dict] | None = None) -> dict:
    body = dict(body, files=file_table(folder, known))
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return body


def verify_manifest(folder: Path, deep: bool = True) -> dict:
    """Check every listed file's size (and sha256 when ``deep``); name the first file that differs."""
    path = folder / MANIFEST
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable manifest ({e}); the checkpoint was not written completely") from e
    for rel, info in body.get("files", {}).items():
        p = folder / rel
        if not p.exists():
            raise CheckpointError(f"{p}: listed in {path.name} but missing; copy the whole checkpoint folder")
        if p.stat().st_size != info["size"]:
            raise CheckpointError(f"{p}: {p.stat().st_size} bytes, the manifest says {info['size']}; the file is "
                                  f"truncated or was changed")
        if deep and sha256(p) != info["sha256"]:
            raise CheckpointError(f"{p}: sha256 differs from {path.name}; the file is corrupt or was changed")
    return body
