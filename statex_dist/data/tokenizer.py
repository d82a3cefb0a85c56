"""Tokenizers for shard writing: a built-in byte-level one, or a local Hugging Face tokenizer folder.

Both turn a batch of documents into arrays of ids *without* special tokens; the shard writer appends the
EOS id after every document itself (and a BOS before it on request), so documents are joined the same
way whatever the tokenizer's own defaults are.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from statex_dist.data.errors import DataError, MissingDataError


class ByteTokenizer:
    """UTF-8 bytes as tokens; needs no files.

    ids 0..255: the bytes; 256: EOS (joins documents); 257: PAD (reserved, never written). vocab_size 258.
    """
    name = "bytes"
    vocab_size = 258
    eos_id = 256
    pad_id = 257
    bos_id: Optional[int] = None
    fingerprint = "bytes-v1"

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8).astype(np.int64) for t in texts]

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A tokenizer folder loaded with ``transformers.AutoTokenizer.from_pretrained`` (local files only).

    ``vocab_size`` is ``len(tokenizer)`` (base vocabulary plus added tokens), the bound every id lies under.
    """

    def __init__(self, path: str):
        folder = Path(path)
        if not folder.is_dir():
            raise MissingDataError(f"tokenizer folder {folder} does not exist (pass a local Hugging Face "
                                   f"tokenizer folder, or 'bytes')")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the writer parallelises over processes
        from transformers import AutoTokenizer
        try:
            self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as e:  # transformers raises a variety of types for a bad folder
            raise DataError(f"cannot load a tokenizer from {folder}: {type(e).__name__}: {e}") from e
        self.name = str(path)
        self.vocab_size = len(self.tok)
        self.eos_id = self.tok.eos_token_id
        self.bos_id = self.tok.bos_token_id
        self.pad_id = self.tok.pad_token_id
        if self.eos_id is None:
            raise DataError(f"tokenizer {folder} defines no eos_token; documents are joined with EOS, so "
                            f"set one in its tokenizer_config.json / special_tokens_map.json")
        h = hashlib.sha256()
        for f in sorted(p for p in folder.iterdir() if p.is_file()):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        self.fingerprint = h.hexdigest()

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        backend = getattr(self.tok, "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "encode_batch_fast"):
            # the Rust tokenizer's batch call without offsets, what the transformers call runs inside, minus
            # building a BatchEncoding: the same ids at about twice the speed
            return [np.asarray(e.ids, dtype=np.int64) for e in backend.encode_batch_fast(list(texts),
                                                                                          add_special_tokens=False)]
        ids = self.tok(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [np.asarray(x, dtype=np.int64) for x in ids]

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])


def load_tokenizer(spec: str):
    """``"bytes"`` -> :class:`ByteTokenizer`; anything else is a local tokenizer folder."""
    return ByteTokenizer() if spec == "bytes" else HFTokenizer(spec)
