"""Documents -> fixed-length token windows -> webdataset tar shards + ``manifest.json`` (see ``format.py``).

How a run goes. The inputs are cut into pieces (``sources.plan_pieces``: byte ranges, row groups, Arrow
files, document ranges; a function of the files alone). ``workers`` processes tokenise pieces with the
tokenizer's batch API, each into ``<key>.tok`` (every document's ids with its EOS, in the shards' dtype) and
``<key>.doc`` (each document's length and the 64-bit hash of its content), named by a key of the piece,
its file's size and mtime and the tokenizer: a finished piece is never tokenised again, whatever else
changes. The main process walks the pieces in order (input order, or a permutation seeded by ``seed``),
routes every document to the train or the valid split by its hash (``valid_fraction``: the same text
always lands in the same split, so a duplicate never straddles them), joins each split's documents and cuts
them into windows of ``seq_len + 1`` tokens at stride ``seq_len``, and stops the train split at exactly
``max_tokens`` tokens (the last document cut there) and the valid split at ``valid_tokens``.

Survives a kill. All of this happens in a work folder beside the output (``.<name>.make_shards``): a piece
appears by rename once whole, a shard by rename once closed, and ``state.json`` (rewritten by rename after
every shard) says how many samples of each split are final. A run started again with the same arguments
tokenises only the pieces that are missing, goes on from the last finished shard of each split (sample
``S`` starts at token ``S * seq_len`` of its split, a position that the pieces' lengths locate), and ends
with the same bytes as a run that was never stopped. The finished folders are renamed into place at the
end, so a reader never sees half a corpus.

Deterministic: every tar member gets mtime 0, uid/gid 0, empty user/group names and mode 0444, and no
manifest field depends on time, host or process count.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from statex_dist.checkpoint.atomic import atomic_write, move_into_place, sha256
from statex_dist.cli_errors import path_inside
from statex_dist.data import format as fmt
from statex_dist.data.errors import DataError
from statex_dist.data.sources import Input, MegatronIndex, Piece, iter_piece, list_inputs, plan_pieces
from statex_dist.data.tokenizer import load_tokenizer

_CHUNK_CHARS = 1 << 20   # documents per tokenizer call: about a megabyte of text
_CHUNK_DOCS = 1024
_ROUTE_TOKENS = 1 << 22  # tokens of a piece routed at a time: a piece is never in memory whole
_DOC = np.dtype([("length", "<i8"), ("hash", "<u8")])
WORK_SUFFIX = ".make_shards"


@dataclass
class ShardOptions:
    seq_len: int = 2048
    samples_per_shard: int = 1024
    tokenizer: str = "bytes"
    text_field: str = "text"
    txt_docs: str = "file"          # "file" | "blank-line" (see sources.py)
    add_bos: bool = False           # prepend the tokenizer's BOS to every document
    workers: int = 1                # tokenisation processes (1: in this process)
    max_tokens: Optional[int] = None      # train split: stop at exactly this many tokens (EOS included)
    valid_fraction: float = 0.0           # documents whose content hash falls below it go to the valid split
    valid_tokens: Optional[int] = None    # valid split: stop at exactly this many tokens
    valid_output: Optional[str] = None    # default: <output>-valid
    seed: Optional[int] = None            # the pieces' order: None = input order (seed 0 with max_tokens)
    unit_bytes: int = 64 << 20            # the size pieces of large files are cut to

    def order_seed(self) -> Optional[int]:
        return 0 if self.seed is None and self.max_tokens is not None else self.seed

    def split_fraction(self) -> float:
        """The hash fraction of the valid split; --valid-tokens alone draws from the lowest 1%."""
        return self.valid_fraction or (0.01 if self.valid_tokens else 0.0)


# --- tokenising a piece (in this process or a forked pool process, which inherits _TOK) -------------------
_TOK = None


def _atomic_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, data)


def _doc_hash(doc) -> int:
    import xxhash
    data = doc.encode("utf-8") if isinstance(doc, str) else np.ascontiguousarray(doc, "<i8").tobytes()
    return xxhash.xxh3_64_intdigest(data)


def _tokenise_piece(piece: Piece, key: str, folder: str, opts: ShardOptions, dtype: str, has_eos: bool) -> str:
    """Write the piece's ``<key>.tok`` / ``.doc`` / ``.json`` into ``folder`` (each by rename); return key."""
    tok = _TOK
    folder = Path(folder)
    tmp = f".tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tok_path, doc_path = folder / f"{key}.tok", folder / f"{key}.doc"
    bos = tok.bos_id if opts.add_bos else None
    np_dtype = fmt.numpy_dtype(dtype)
    docs = tokens = nbytes = 0
    with open(str(tok_path) + tmp, "wb") as ft, open(str(doc_path) + tmp, "wb") as fd:
        batch: list = []
        chars = 0

        def flush():
            nonlocal docs, tokens
            if not batch:
                return
            texts = [d for d in batch if isinstance(d, str)]
            encoded = iter(tok.encode_batch(texts)) if texts else iter(())
            parts, rows = [], np.empty(len(batch), _DOC)
            for j, d in enumerate(batch):
                ids = next(encoded) if isinstance(d, str) else d
                if not isinstance(d, str) and len(ids) and int(ids.max()) >= tok.vocab_size:
                    raise DataError(f"{piece.path}.bin: a document of documents {piece.start}..{piece.end} holds "
                                    f"token id {int(ids.max())}, outside tokenizer {tok.name}'s vocabulary of "
                                    f"{tok.vocab_size}; pass the tokenizer the data was made with")
                if bos is not None:
                    parts.append(np.array([bos]))
                parts.append(ids)
                if isinstance(d, str) or not has_eos:
                    parts.append(np.array([tok.eos_id]))
                rows[j] = (len(ids) + (bos is not None) + (isinstance(d, str) or not has_eos), _doc_hash(d))
            ft.write(np.concatenate(parts).astype(np_dtype).tobytes())
            fd.write(rows.tobytes())
            docs += len(batch)
            tokens += int(rows["length"].sum())
            batch.clear()

        for doc, n in iter_piece(piece, opts.text_field, opts.txt_docs):
            nbytes += n
            if doc is None:
                continue
            batch.append(doc)
            chars += len(doc)
            if chars >= _CHUNK_CHARS or len(batch) >= _CHUNK_DOCS:
                flush()
                chars = 0
        flush()
    os.replace(str(tok_path) + tmp, tok_path)
    os.replace(str(doc_path) + tmp, doc_path)
    # the .json last: its presence is what says the piece is whole
    _atomic_bytes(folder / f"{key}.json", json.dumps({"docs": docs, "tokens": tokens, "piece": piece.as_dict()}).encode())
    return key


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


def _tar_writer(fileobj):
    """A webdataset TarWriter whose tars are byte-reproducible (mtime 0, no owner, 0444)."""
    from webdataset import TarWriter
    return TarWriter(fileobj, encoder=False, mtime=0, user="", group="", mode=0o444)


def shard_writer(folder: Path, samples_per_shard: int):
    """A webdataset ShardWriter into ``folder`` with the same member settings as :func:`_tar_writer`."""
    from webdataset import ShardWriter
    return ShardWriter(str(folder / fmt.SHARD_PATTERN), maxcount=samples_per_shard, maxsize=float("inf"),
                       verbose=0, encoder=False, mtime=0, user="", group="", mode=0o444)


def shard_table(folder: Path, samples: int, samples_per_shard: int) -> list[dict]:
    """The manifest's ``shards`` list for the tars a :func:`shard_writer` wrote: name, samples, bytes, sha256."""
    return [{"file": f.name, "samples": min(samples_per_shard, samples - i * samples_per_shard),
             "bytes": f.stat().st_size, "sha256": sha256(f)} for i, f in enumerate(sorted(folder.glob("shard-*.tar")))]


def tokenizer_entry(tok, vocab_size: Optional[int] = None) -> dict:
    """The manifest's ``tokenizer`` record (``vocab_size`` may exceed the tokenizer's, for task id blocks)."""
    return {"name": tok.name, "vocab_size": vocab_size or tok.vocab_size, "eos_id": tok.eos_id,
            "bos_id": tok.bos_id, "pad_id": tok.pad_id, "fingerprint": tok.fingerprint}


class _Split:
    """One output split: its token stream (from ``start`` tokens on), windows, and tars in ``folder``."""

    def __init__(self, name: str, folder: Path, T: int, sps: int, dtype: str, cap: Optional[int], saved: dict):
        self.name, self.folder, self.T, self.sps, self.dtype, self.cap = name, folder, T, sps, dtype, cap
        self.field = fmt.sample_field(dtype)
        self.samples = self.saved_samples = saved["samples"]
        self.shards = list(saved["shards"])
        self.start = self.samples * T            # the split's token where writing resumes
        self.pos = 0                             # split tokens walked so far (all pieces before the current one)
        self.packer = _Packer(T)
        self.tar = self.file = None
        self.done = False
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("shard-*.tar"):   # shards past the saved state are written again
            if int(stale.stem.split("-")[1]) >= len(self.shards):
                stale.unlink()

    def saved(self) -> dict:
        return {"samples": self.saved_samples, "shards": self.shards}

    def room(self) -> Optional[int]:
        return None if self.cap is None else self.cap - self.pos

    def feed(self, ids: np.ndarray, on_shard) -> None:
        """Tokens ``[pos, pos + len(ids))`` of the split; those before ``start`` were written before a kill."""
        a = self.pos
        self.pos += len(ids)
        if self.pos <= self.start:
            return
        if a < self.start:
            ids = ids[self.start - a:]
        for window in self.packer.add(ids):
            if self.tar is None:
                self._open()
            self.tar.write({"__key__": f"{self.samples:0{fmt.KEY_DIGITS}d}",
                            self.field: fmt.encode_tokens(window, self.dtype)})
            self.samples += 1
            if self.samples % self.sps == 0:
                self._close()
                on_shard()

    def _open(self):
        self.path = self.folder / (fmt.SHARD_PATTERN % len(self.shards))
        self.file = open(str(self.path) + ".tmp", "wb")
        self.tar = _tar_writer(self.file)
        self.in_tar = 0

    def _close(self):
        self.tar.close()
        self.file.close()
        os.replace(str(self.path) + ".tmp", self.path)
        n = self.samples - self.saved_samples
        self.saved_samples = self.samples
        self.shards.append({"file": self.path.name, "samples": n, "bytes": self.path.stat().st_size,
                            "sha256": sha256(self.path)})
        self.tar = self.file = None

    def finish(self) -> None:
        if self.tar is not None:
            self._close()


class _Work:
    """The work folder: pieces, the splits' shards and ``state.json``."""

    def __init__(self, out: Path):
        self.dir = out.parent / f".{out.name}{WORK_SUFFIX}"
        self.pieces = self.dir / "pieces"
        self.state_path = self.dir / "state.json"

    def state(self) -> Optional[dict]:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def save(self, state: dict) -> None:
        _atomic_bytes(self.state_path, (json.dumps(state) + "\n").encode())

    def clean_temporaries(self) -> None:
        for p in self.dir.rglob("*"):
            if ".tmp" in p.name and p.is_file():
                p.unlink()


def _stat_key(inp: Input) -> list:
    return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in inp.files()]


def _input_digest(inp: Input) -> str:
    h = hashlib.sha256()
    buf = bytearray(1 << 20)
    for f in inp.files():
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                h.update(memoryview(buf)[:n])
    return h.hexdigest()


def _finish_renames(work: _Work, state: dict) -> dict:
    """The last step, also of a run killed inside it: the finished folders into place, the work folder away."""
    for name in ("valid", "train"):
        dst = state["outputs"].get(name)
        if dst and (work.dir / name).exists():
            move_into_place(work.dir / name, Path(dst))
    # renamed away first: a kill inside the removal leaves no half work folder that a rerun would read
    trash = work.dir.parent / f"{work.dir.name}.done-{uuid.uuid4().hex[:8]}"
    os.replace(work.dir, trash)
    shutil.rmtree(trash, ignore_errors=True)
    return json.loads((Path(state["outputs"]["train"]) / fmt.MANIFEST).read_text())


class _Progress:
    """A bar over input bytes (or the token budget) with documents/s, tokens/s and the ETA."""

    def __init__(self, total: int, unit: str, enabled: bool):
        from tqdm import tqdm
        self.bar = tqdm(total=total, unit=unit, unit_scale=True, desc="make_shards", disable=not enabled,
                        file=sys.stderr, dynamic_ncols=True)
        self.t0, self.docs, self.tokens, self.unit = time.time(), 0, 0, unit

    def update(self, n: int, docs: int, tokens: int) -> None:
        """``n`` more units of the bar; ``docs`` and ``tokens``: the totals so far."""
        self.docs, self.tokens = docs, tokens
        dt = max(1e-9, time.time() - self.t0)
        rates = f"{self.docs / dt:,.0f} docs/s" + ("" if self.unit == "tok" else f", {self.tokens / dt:,.0f} tok/s")
        self.bar.set_postfix_str(rates, refresh=False)
        self.bar.update(n)

    def close(self):
        self.bar.close()


def make_shards(inputs: Sequence[str | Path], out_dir: str | Path, opts: ShardOptions, overwrite: bool = False,
                progress: bool = True) -> dict:
    """Write the shard folder ``out_dir`` (and the valid split's, with ``valid_fraction`` / ``valid_tokens``)
    from ``inputs``; return the train manifest (also in ``manifest.json``; ``["valid"]`` sums up the other).
    A run that was killed is continued by the same call (see the module docstring)."""
    out = Path(out_dir).absolute()
    work = _Work(out)
    for trash in out.parent.glob(f"{work.dir.name}.done-*"):
        shutil.rmtree(trash, ignore_errors=True)
    state = work.state()
    call = json.loads(json.dumps([[str(i) for i in inputs], vars(opts), overwrite]))
    if state and state.get("final"):  # a run killed while renaming its finished folders into place
        m = _finish_renames(work, state)
        if state.get("call") == call:
            return m
        state = None
    split = opts.valid_fraction > 0 or bool(opts.valid_tokens)
    valid_out = Path(opts.valid_output or f"{out}-valid").absolute() if split else None
    for dst in filter(None, (out, valid_out)):
        if dst.exists() and not overwrite:
            raise DataError(f"{dst} already exists; pass --overwrite to replace it")
    if opts.seq_len < 1 or opts.samples_per_shard < 1:
        raise DataError(f"seq_len ({opts.seq_len}) and samples_per_shard ({opts.samples_per_shard}) must be >= 1")
    if not 0.0 <= opts.valid_fraction < 1.0:
        raise DataError(f"valid_fraction must be in [0, 1), got {opts.valid_fraction}")
    if opts.max_tokens is not None and opts.max_tokens < opts.seq_len + 1:
        raise DataError(f"--max-tokens {opts.max_tokens} is fewer than seq_len + 1 = {opts.seq_len + 1}: no sample")
    if valid_out is not None and valid_out == out:
        raise DataError(f"--valid-output is the output folder {out}")
    inputs_ = list_inputs(inputs)
    for inp in inputs_:
        for dst in filter(None, (out, valid_out)):
            if path_inside(inp.path, dst):  # writing the folder (or --overwrite) would remove the corpus it reads
                raise DataError(f"output folder {dst} holds the input {inp.path}; write the shards elsewhere")
    tok = load_tokenizer(opts.tokenizer)
    if opts.add_bos and tok.bos_id is None:
        raise DataError(f"--add-bos: tokenizer {tok.name} has no BOS token")
    dtype = fmt.token_dtype_name(tok.vocab_size)
    has_eos = {n: MegatronIndex(i.path).check_tokenizer(tok) is not None
               for n, i in enumerate(inputs_) if i.kind == "megatron"}
    pieces = plan_pieces(inputs_, opts.unit_bytes, opts.text_field)
    stats = [_stat_key(i) for i in inputs_]
    token_opts = [tok.fingerprint, opts.text_field, opts.txt_docs, opts.add_bos, dtype]

    def key(p: Piece) -> str:
        ident = [p.as_dict() | {"index": 0}, stats[p.index], token_opts, has_eos.get(p.index)]
        return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:24]
    keys = [key(p) for p in pieces]
    seed = opts.order_seed()
    order = list(range(len(pieces))) if seed is None else np.random.default_rng(seed).permutation(len(pieces)).tolist()
    caps = {"train": opts.max_tokens, "valid": opts.valid_tokens}
    plan_id = hashlib.sha256(json.dumps([[keys[i] for i in order], opts.seq_len, opts.samples_per_shard, caps,
                                         opts.split_fraction(), split, tokenizer_entry(tok)]).encode()).hexdigest()
    outputs = {"train": str(out), "valid": str(valid_out) if valid_out else None}
    work.dir.mkdir(parents=True, exist_ok=True)
    work.pieces.mkdir(exist_ok=True)
    work.clean_temporaries()
    resumed = state is not None and state.get("plan") == plan_id
    if resumed:
        state["call"] = call
    if not resumed:
        for name in ("train", "valid"):
            shutil.rmtree(work.dir / name, ignore_errors=True)
        state = {"plan": plan_id, "call": call, "outputs": outputs, "train": {"samples": 0, "shards": []},
                 "valid": {"samples": 0, "shards": []}}
        work.save(state)
    done = {k for k in keys if (work.pieces / f"{k}.json").exists()}
    if progress and (done or resumed):
        print(f"make_shards: continuing in {work.dir}: {len(done & set(keys))} of {len(keys)} pieces already "
              f"tokenised, {len(state['train']['shards'])} train shards written", file=sys.stderr)
    T, sps = opts.seq_len, opts.samples_per_shard
    splits = {"train": _Split("train", work.dir / "train", T, sps, dtype, caps["train"], state["train"])}
    if split:
        splits["valid"] = _Split("valid", work.dir / "valid", T, sps, dtype, caps["valid"], state["valid"])

    last_save = [0.0]

    def save(force: bool = False):
        # at most once a second: a kill then costs the shards written since (written again, the same bytes)
        if force or time.time() - last_save[0] >= 1.0:
            state.update({name: s.saved() for name, s in splits.items()})
            work.save(state)
            last_save[0] = time.time()

    budget = opts.max_tokens
    bar = _Progress(budget or sum(p.nbytes for p in pieces), "tok" if budget else "B", progress)
    global _TOK
    _TOK = tok
    threshold = np.uint64(min(2 ** 64 - 1, int(opts.split_fraction() * 2 ** 64)))
    counts = {name: [0, 0] for name in splits}        # documents, tokens written to each split
    # the pool forks before the hashing threads start: a fork copies no thread, but would copy their locks
    pool = mp.get_context("fork").Pool(opts.workers) if opts.workers > 1 else None
    from concurrent.futures import ThreadPoolExecutor
    hasher = ThreadPoolExecutor(max_workers=2)
    digest_jobs = {n: hasher.submit(_input_digest, i) for n, i in enumerate(inputs_)}
    try:
        pending: dict = {}
        ahead = 0

        def submit_until(limit: int):
            nonlocal ahead
            while ahead < min(limit, len(order)):
                i = order[ahead]
                if keys[i] not in done:
                    args = (pieces[i], keys[i], str(work.pieces), opts, dtype, has_eos.get(pieces[i].index, False))
                    pending[i] = pool.apply_async(_tokenise_piece, args)
                ahead += 1
        for n_done, i in enumerate(order):
            if all(s.done for s in splits.values()):
                break
            if keys[i] not in done:
                if pool is None:
                    _tokenise_piece(pieces[i], keys[i], str(work.pieces), opts, dtype,
                                    has_eos.get(pieces[i].index, False))
                else:
                    submit_until(n_done + 2 * opts.workers)
                    pending.pop(i).get()
                done.add(keys[i])
            if pool is not None:
                submit_until(n_done + 2 * opts.workers)
            fed = _route(work.pieces / keys[i], splits, threshold, counts, save, fmt.numpy_dtype(dtype))
            bar.update(fed if budget else pieces[i].nbytes, sum(c[0] for c in counts.values()),
                       sum(c[1] for c in counts.values()))
            if splits["train"].done and "valid" in splits:
                splits["valid"].done = True   # the valid split ends with the piece where the train split ends
    except DataError as e:
        if pool is not None:
            pool.terminate()
        bar.close()
        hasher.shutdown(wait=False, cancel_futures=True)
        kept = len(done & set(keys))
        if not kept:
            shutil.rmtree(work.dir, ignore_errors=True)
            raise
        raise type(e)(f"{e} (the {kept} pieces tokenised so far are kept in {work.dir}: a rerun after the fix "
                      f"reuses them)") from e
    except BaseException:
        if pool is not None:
            pool.terminate()
        bar.close()
        hasher.shutdown(wait=False, cancel_futures=True)
        raise
    if pool is not None:  # pieces tokenised ahead past a reached budget are not needed
        pool.terminate()
        pool.join()
    bar.close()
    for s in splits.values():
        s.finish()
    save(force=True)
    tr = splits["train"]
    if tr.samples == 0:
        shutil.rmtree(work.dir, ignore_errors=True)
        raise DataError(f"the inputs hold {tr.pos} tokens in {counts['train'][0]} documents, fewer than "
                        f"seq_len + 1 = {T + 1}: no sample to write")
    if split and splits["valid"].samples == 0:
        shutil.rmtree(work.dir, ignore_errors=True)
        raise DataError(f"the valid split holds {splits['valid'].pos} tokens in {counts['valid'][0]} documents, "
                        f"fewer than seq_len + 1 = {T + 1}: raise --valid-fraction")
    digests = {n: j.result() for n, j in digest_jobs.items()}
    hasher.shutdown()
    inputs_entry = [{"path": str(i.path), "bytes": i.nbytes(), "sha256": digests[n]} for n, i in enumerate(inputs_)]
    options = {"samples_per_shard": sps, "text_field": opts.text_field, "txt_docs": opts.txt_docs,
               "add_bos": opts.add_bos}
    if budget is not None or split or seed is not None:
        options.update({"max_tokens": budget, "valid_fraction": opts.split_fraction() if split else 0.0,
                        "valid_tokens": opts.valid_tokens, "seed": seed, "unit_bytes": opts.unit_bytes})
    extra = {}
    for name in sorted(splits, reverse=True):   # valid first: the train manifest sums it up
        s = splits[name]
        m = fmt.write_manifest(
            work.dir / name, seq_len=T, dtype=dtype, tokenizer=tokenizer_entry(tok), shards=s.shards,
            total_tokens=s.samples * T, documents=counts[name][0], corpus_tokens=s.pos,
            dropped_tokens=s.pos - (s.samples * T + 1), **({"split": name} if split else {}), **extra,
            inputs=inputs_entry, options=options)
        if name == "valid":
            extra = {"valid": {"folder": str(valid_out), "documents": m["documents"],
                               "corpus_tokens": m["corpus_tokens"], "total_samples": m["total_samples"],
                               "shards": len(m["shards"])}}
    state["final"] = True
    work.save(state)
    return _finish_renames(work, state)


def _route(base: Path, splits: dict, threshold: np.uint64, counts: dict, save, dtype) -> int:
    """Send a piece's documents to their splits, in order, up to each split's cap; return train tokens fed."""
    docs = np.fromfile(str(base) + ".doc", dtype=_DOC)
    if not len(docs):
        return 0
    # read by block, not memory-mapped: the mapped pages of a whole piece would count in this process's RSS
    tokens = open(str(base) + ".tok", "rb")
    to_valid = docs["hash"] < threshold if "valid" in splits else np.zeros(len(docs), bool)
    ends = np.cumsum(docs["length"])
    starts = ends - docs["length"]
    fed = 0
    # documents in groups of about _ROUTE_TOKENS tokens
    cuts = np.unique(np.concatenate([[0], np.searchsorted(ends, np.arange(_ROUTE_TOKENS, ends[-1], _ROUTE_TOKENS)),
                                     [len(docs)]]))
    try:
        for a, b in zip(cuts, cuts[1:]):
            if a == b:
                continue
            block = None
            for name, s in splits.items():
                if s.done:
                    continue
                mine = to_valid[a:b] if name == "valid" else ~to_valid[a:b]
                if not mine.any():
                    continue
                lengths = docs["length"][a:b][mine]
                room = s.room()
                skip_all = s.pos + int(lengths.sum()) <= s.start and (room is None or lengths.sum() < room)
                if skip_all:  # before the resume point: only the position moves
                    n_docs, n_tok = len(lengths), int(lengths.sum())
                    s.pos += n_tok
                else:
                    if block is None:
                        tokens.seek(int(starts[a]) * dtype.itemsize)
                        block = np.fromfile(tokens, dtype=dtype, count=int(ends[b - 1] - starts[a]))
                    ids = block[np.repeat(mine, docs["length"][a:b])]
                    if room is not None and len(ids) >= room:
                        ids = ids[:room]
                        s.done = True
                    n_tok = len(ids)
                    n_docs = int(np.searchsorted(np.cumsum(lengths), n_tok, side="left")) + 1 if n_tok else 0
                    n_docs = min(n_docs, len(lengths))
                    s.feed(ids.astype(np.int64), save)
                counts[name][0] += n_docs
                counts[name][1] += n_tok
                if name == "train":
                    fed += n_tok
                if room is not None and s.pos >= s.cap:
                    s.done = True
    finally:
        tokens.close()
    return fed
