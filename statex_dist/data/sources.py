"""Documents from input files.

- ``.jsonl``: one JSON object a line; the document is its ``text`` field (``text_field``). Blank lines skip.
- ``.txt``: ``txt_docs="file"`` (default): the whole file is one document (books, articles);
  ``txt_docs="blank-line"``: every block separated by one or more blank lines is a document.
Documents that are empty or only whitespace are skipped (they would add a bare EOS). Files must be UTF-8.
A folder given as input stands for every ``.txt`` / ``.jsonl`` below it, in sorted path order.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator, Optional, Sequence

from statex_dist.data.errors import DataError, MissingDataError

SUFFIXES = (".txt", ".jsonl")
_BLANK = re.compile(r"\n[ \t\r\f\v]*\n")


def list_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders; keep the given order of explicit files (it is part of the output's identity)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES)
            if not found:
                raise DataError(f"input folder {p} holds no .txt or .jsonl files")
            out.extend(found)
        elif p.is_file():
            if p.suffix not in SUFFIXES:
                raise DataError(f"input {p}: unsupported type '{p.suffix}' (use .txt or .jsonl)")
            if p.stat().st_size == 0:  # named on purpose, so empty by mistake (a folder's empty files are skipped)
                raise DataError(f"input {p} is empty (0 bytes)")
            out.append(p)
        else:
            raise MissingDataError(f"input {p} does not exist")
    if not out:
        raise DataError("no inputs given")
    return out


def iter_documents(path: Path, text_field: str = "text", txt_docs: str = "file") -> Iterator[tuple[Optional[str], int]]:
    """Yield ``(document, input bytes consumed)``; a ``None`` document only reports progress."""
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    yield None, len(line)
                    continue
                try:
                    text = json.loads(line)[text_field]
                except (ValueError, KeyError, TypeError) as e:
                    raise DataError(f"{path}:{lineno}: not a JSON object with a '{text_field}' field "
                                    f"({type(e).__name__}: {e})") from e
                if not isinstance(text, str):
                    raise DataError(f"{path}:{lineno}: '{text_field}' is {type(text).__name__}, not a string")
                yield (text if text.strip() else None), len(line)
        return
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 ({e})") from e
    if txt_docs == "file":
        yield (text if text.strip() else None), len(data)
    elif txt_docs == "blank-line":
        for block in _BLANK.split(text):
            if block.strip():
                yield block.strip("\n"), 0
        yield None, len(data)
    else:
        raise DataError(f"txt_docs must be 'file' or 'blank-line', not {txt_docs!r}")
