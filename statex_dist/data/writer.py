"""Text -> fixed-length token windows -> webdataset tar shards + ``manifest.json`` (see ``format.py``).

Deterministic: documents are read in input order, tokenised in ordered chunks (any ``workers`` gives the
same ids), and every tar member gets mtime 0, uid/gid 0, empty user/group names and mode 0444, so the same
inputs and options give the same bytes. The folder is written beside the destination and renamed into
place, so a reader never sees half a corpus.
"""
from __future__ import annotations

import collections
import json
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from statex_dist.data import format as fmt
from statex_dist.data.errors import DataError
from statex_dist.data.sources import iter_documents, list_inputs
from statex_dist.data.tokenizer import load_tokenizer

_CHUNK_CHARS = 1 << 20   # documents per tokenisation task: about a megabyte of text
_CHUNK_DOCS = 1024


@dataclass
class ShardOptions:
    seq_len: int = 2048
    samples_per_shard: int = 1024
    tokenizer: str = "bytes"
    text_field: str = "text"
    txt_docs: str = "file"          # "file" | "blank-line" (see sources.py)
    add_bos: bool = False           # prepend the tokenizer's BOS to every document
    workers: int = 1                # tokenisation processes (1: in this process)


# --- tokenisation (runs in forked pool processes, which inherit _TOK) --------------------------------------
_TOK = None


def _encode_chunk(texts: list[str], bos: Optional[int], eos: int) -> np.ndarray:
    """Documents -> one array ``[bos] doc eos [bos] doc eos ...``."""
    parts = []
    for ids in _TOK.encode_batch(texts):
        if bos is not None:
            parts.append(np.array([bos], dtype=np.int64))
        parts.append(ids)
        parts.append(np.array([eos], dtype=np.int64))
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _chunks(paths: Sequence[Path], opts: ShardOptions) -> Iterator[tuple[list[str], int]]:
    """(documents, input bytes they came from), about ``_CHUNK_CHARS`` characters at a time."""
    docs, chars, nbytes = [], 0, 0
    for p in paths:
        for text, n in iter_documents(p, opts.text_field, opts.txt_docs):
            nbytes += n
            if text is not None:
                docs.append(text)
                chars += len(text)
            if chars >= _CHUNK_CHARS or len(docs) >= _CHUNK_DOCS:
                yield docs, nbytes
                docs, chars, nbytes = [], 0, 0
    if docs or nbytes:
        yield docs, nbytes


def _token_chunks(paths, opts: ShardOptions, tok) -> Iterator[tuple[np.ndarray, int, int]]:
    """(token ids, documents, input bytes) per chunk, in input order; at most a few chunks in flight."""
    global _TOK
    _TOK = tok
    bos = tok.bos_id if opts.add_bos else None
    if opts.workers <= 1:
        for docs, nbytes in _chunks(paths, opts):
            yield _encode_chunk(docs, bos, tok.eos_id), len(docs), nbytes
        return
    with mp.get_context("fork").Pool(opts.workers) as pool:
        pending: collections.deque = collections.deque()
        for docs, nbytes in _chunks(paths, opts):
            pending.append((pool.apply_async(_encode_chunk, (docs, bos, tok.eos_id)), len(docs), nbytes))
            if len(pending) >= 2 * opts.workers:   # bounded: the corpus never sits in memory whole
                r, n, b = pending.popleft()
                yield r.get(), n, b
        while pending:
            r, n, b = pending.popleft()
            yield r.get(), n, b


class _Packer:
    """Cuts a token stream into windows of ``T + 1`` ids at stride ``T`` (neighbours share one token)."""

    def __init__(self, seq_len: int):
        self.T = seq_len
        self.rest = np.empty(0, np.int64)

    def add(self, ids: np.ndarray) -> list[np.ndarray]:
        buf = np.concatenate([self.rest, ids]) if len(self.rest) else ids
        n = max(0, (len(buf) - 1) // self.T)
        out = [buf[i * self.T: i * self.T + self.T + 1] for i in range(n)]
        self.rest = buf[n * self.T:]
        return out


def shard_writer(folder: Path, samples_per_shard: int):
    """A webdataset ShardWriter into ``folder`` whose tars are byte-reproducible (mtime 0, no owner, 0444)."""
    from webdataset import ShardWriter
    return ShardWriter(str(folder / fmt.SHARD_PATTERN), maxcount=samples_per_shard, maxsize=float("inf"),
                       verbose=0, encoder=False, mtime=0, user="", group="", mode=0o444)


def shard_table(folder: Path, samples: int, samples_per_shard: int) -> list[dict]:
    """The manifest's ``shards`` list for the tars a :func:`shard_writer` wrote: name, samples, bytes, sha256."""
    from statex_dist.checkpoint.atomic import sha256
    return [{"file": f.name, "samples": min(samples_per_shard, samples - i * samples_per_shard),
             "bytes": f.stat().st_size, "sha256": sha256(f)} for i, f in enumerate(sorted(folder.glob("shard-*.tar")))]


def tokenizer_entry(tok, vocab_size: Optional[int] = None) -> dict:
    """The manifest's ``tokenizer`` record (``vocab_size`` may exceed the tokenizer's, for task id blocks)."""
    return {"name": tok.name, "vocab_size": vocab_size or tok.vocab_size, "eos_id": tok.eos_id,
            "bos_id": tok.bos_id, "pad_id": tok.pad_id, "fingerprint": tok.fingerprint}


def make_shards(inputs: Sequence[str | Path], out_dir: str | Path, opts: ShardOptions, overwrite: bool = False,
                progress: bool = True) -> dict:
    """Write the shard folder ``out_dir`` from ``inputs``; return its manifest (also in ``manifest.json``)."""
    from tqdm import tqdm

    from statex_dist.checkpoint.atomic import atomic_dir, sha256

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; pass --overwrite to replace it")
    if opts.seq_len < 1 or opts.samples_per_shard < 1:
        raise DataError(f"seq_len ({opts.seq_len}) and samples_per_shard ({opts.samples_per_shard}) must be >= 1")
    paths = list_inputs(inputs)
    from statex_dist.cli_errors import path_inside
    inside = [str(p) for p in paths if path_inside(p, out)]
    if inside:  # writing the folder (or --overwrite) would remove the corpus it reads
        raise DataError(f"output folder {out} holds the input {inside[0]}; write the shards elsewhere")
    tok = load_tokenizer(opts.tokenizer)
    if opts.add_bos and tok.bos_id is None:
        raise DataError(f"--add-bos: tokenizer {tok.name} has no BOS token")
    dtype = fmt.token_dtype_name(tok.vocab_size)
    field = fmt.sample_field(dtype)
    total_bytes = sum(p.stat().st_size for p in paths)
    docs = corpus_tokens = samples = 0
    with atomic_dir(out, overwrite=overwrite) as tmp:
        packer = _Packer(opts.seq_len)
        bar = tqdm(total=total_bytes, unit="B", unit_scale=True, desc="tokenising", disable=not progress)
        writer = shard_writer(tmp, opts.samples_per_shard)
        try:
            for ids, ndocs, nbytes in _token_chunks(paths, opts, tok):
                docs += ndocs
                corpus_tokens += len(ids)
                for window in packer.add(ids):
                    writer.write({"__key__": f"{samples:0{fmt.KEY_DIGITS}d}", field: fmt.encode_tokens(window, dtype)})
                    samples += 1
                bar.update(nbytes)
                bar.set_postfix(samples=samples, refresh=False)
        finally:
            writer.close()
            bar.close()
        if samples == 0:
            raise DataError(f"the inputs hold {corpus_tokens} tokens in {docs} documents, fewer than "
                            f"seq_len + 1 = {opts.seq_len + 1}: no sample to write")
        sps = opts.samples_per_shard
        shards = shard_table(tmp, samples, sps)
        manifest = {
            "format": fmt.FORMAT,
            "seq_len": opts.seq_len,
            "sample_tokens": opts.seq_len + 1,
            "token_dtype": dtype,
            "sample_field": field,
            "tokenizer": tokenizer_entry(tok),
            "documents": docs,
            "corpus_tokens": corpus_tokens,
            "total_samples": samples,
            "total_tokens": samples * opts.seq_len,           # label tokens per epoch
            "dropped_tokens": corpus_tokens - (samples * opts.seq_len + 1),   # the tail shorter than a window
            "shards": shards,
            "inputs": [{"path": str(p), "bytes": p.stat().st_size, "sha256": sha256(p)} for p in paths],
            "options": {"samples_per_shard": sps, "text_field": opts.text_field, "txt_docs": opts.txt_docs,
                        "add_bos": opts.add_bos},
        }
        (tmp / fmt.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest
