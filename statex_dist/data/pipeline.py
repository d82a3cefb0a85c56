"""The training data stream: webdataset shards -> micro-batches, split by data-parallel rank, resumable.

Who reads what. A *reader* is one DataLoader worker of one DP rank; there are ``dp_size x workers`` of
them. In epoch ``e`` the shard list is permuted with ``(seed, e)`` (the same permutation on every rank),
DP rank ``r`` takes every ``dp_size``-th shard from ``r`` (webdataset ``nodesplitter``, by *data-parallel*
rank: all TP / PP ranks of one replica read the same samples), and its worker ``w`` every ``workers``-th
of those (``workersplitter``). Samples pass a shuffle buffer seeded with ``(seed, e, dp_rank, w)`` that
is emptied at the end of each epoch, so an epoch is a clean pass: over all DP ranks, every sample once.
Readers then go on to epoch ``e + 1``: the stream is infinite. Readers whose shards hold more samples
reach the next epoch later; across epochs the permutation evens this out. Every TP / PP rank runs its
own readers (no broadcast, so no collective on the data path; the price is TP x PP reads of each shard).

Order. Each reader's stream is a pure function of (manifest, seed, epoch, dp_rank, dp_size, workers,
shuffle_buffer); batches are cut inside the reader and the DataLoader hands them out round robin
(batch ``i`` from reader ``i % workers``). So batch ``k`` of a DP rank is determined by ``k``.

Resume. The position is the number of micro-batches this DP rank has handed out (every DP rank hands out
the same number, so any rank's position restores all of them). On resume reader ``l`` skips the batches
it had made: whole epochs are skipped by arithmetic on the manifest's sample counts (no reading); inside
the current epoch its samples are read again and dropped before decoding. Cost: at most one epoch's
share of one reader, ``total_samples / (dp_size x workers)`` samples of sequential tar reading per worker.
Exact resume needs the same shards, seed, micro_batch, dp_size, workers and shuffle_buffer; any change
is refused with the field named.
"""
from __future__ import annotations

import hashlib
import multiprocessing as mp
import random
import warnings
from itertools import islice
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from statex_dist.data import errors
from statex_dist.data.errors import DataError, ShardError
from statex_dist.data.format import Manifest, check_shards

POSITION_VERSION = 1


class _Every:
    """webdataset splitter: every ``step``-th shard from ``start`` (by DP rank, then by reader)."""

    def __init__(self, start: int, step: int):
        self.start, self.step = start, step

    def __call__(self, src):
        yield from islice(src, self.start, None, self.step)


def _shard_error(exn: Exception) -> bool:
    """webdataset handler: name the shard file. webdataset appends the url to ``args`` once it knows it."""
    url = next((a for a in reversed(exn.args) if isinstance(a, str) and a.endswith(".tar")), None)
    if isinstance(exn, ShardError) or url is None:
        raise exn
    raise ShardError(f"shard {url} is corrupt or unreadable ({type(exn).__name__}: {exn.args[0]}); "
                     f"re-create it with tools/make_shards.py") from exn


class _Plan:
    """Which shards each reader reads in each epoch; computed alike on every rank from the manifest."""

    def __init__(self, m: Manifest, dp_rank: int, dp_size: int, readers: int, seed: int):
        self.m, self.dp_rank, self.dp_size, self.readers, self.seed = m, dp_rank, dp_size, readers, seed

    def order(self, epoch: int) -> list[int]:
        """All shard indices in epoch order (no dp_rank in the seed: the ranks must agree to split it)."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.m.shards)).tolist()

    def reader_shards(self, epoch: int, reader: int) -> list[int]:
        return self.order(epoch)[self.dp_rank::self.dp_size][reader::self.readers]

    def reader_samples(self, epoch: int, reader: int) -> int:
        return sum(self.m.shards[i].samples for i in self.reader_shards(epoch, reader))

    def shuffle_seed(self, epoch: int, reader: int) -> int:
        key = f"{self.seed}/{epoch}/{self.dp_rank}/{reader}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def _check_counts(src, m: Manifest, urls: list[str]):
    """Pass samples through; fail naming the shard when one holds fewer / more samples than the manifest."""
    expected = {str(s.path): s.samples for s in m.shards}
    seen: dict[str, int] = {}
    for s in src:
        url = s["__url__"]
        if url not in seen and seen:
            last = next(reversed(seen))
            _compare(last, seen[last], expected[last], m)
        seen[url] = seen.get(url, 0) + 1
        yield s
    for url in urls:
        _compare(url, seen.get(url, 0), expected[url], m)


def _compare(url: str, got: int, want: int, m: Manifest) -> None:
    if got != want:
        raise ShardError(f"shard {url} yielded {got} samples, {m.dir / 'manifest.json'} says {want}: the shard "
                         f"is empty, truncated or corrupt; re-create it with tools/make_shards.py")


class _ReaderStream(IterableDataset):
    """Runs in each DataLoader worker: one reader's samples, cut into micro-batches.

    Yields numpy ``{"tokens": [B, T+1] (stored dtype), "index": [B], "epoch": [B]}``; the last batch of a
    finite stream (``epochs``) may be shorter.
    """

    def __init__(self, plan: _Plan, micro_batch: int, shuffle_buffer: int, start_epoch: int,
                 start_batches: int, epochs: Optional[int]):
        self.plan, self.B, self.buffer = plan, micro_batch, shuffle_buffer
        self.start_epoch, self.start_batches, self.epochs = start_epoch, start_batches, epochs

    def _epoch_samples(self, epoch: int, reader: int):
        import webdataset as wds
        p = self.plan
        urls = [str(p.m.shards[i].path) for i in p.order(epoch)]
        ds = wds.WebDataset(urls, handler=_shard_error, shardshuffle=False, empty_check=False,
                            nodesplitter=_Every(p.dp_rank, p.dp_size), workersplitter=_Every(reader, p.readers))
        mine = [str(p.m.shards[i].path) for i in p.reader_shards(epoch, reader)]
        ds = ds.compose(lambda src: _check_counts(src, p.m, mine))
        if self.buffer > 1:
            ds = ds.shuffle(self.buffer, initial=self.buffer, rng=random.Random(p.shuffle_seed(epoch, reader)))
        return ds

    def _samples(self, reader: int, skip: int) -> Iterator[tuple]:
        """(tokens [T+1], loss mask [T] or None, global sample index, epoch) of one reader, after dropping its first ``skip``."""
        p, e = self.plan, self.start_epoch
        end = None if self.epochs is None else self.start_epoch + self.epochs
        while end is None or e < end:
            n = p.reader_samples(e, reader)
            if skip >= n:          # a whole epoch already consumed: skip it without reading
                skip, e = skip - n, e + 1
                continue
            for s in islice(iter(self._epoch_samples(e, reader)), skip, None):
                yield p.m.decode(s), p.m.decode_mask(s), int(s["__key__"]), e
            skip, e = 0, e + 1

    def __iter__(self):
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        W, k = self.plan.readers, self.start_batches
        if n_workers != W:
            raise DataError(f"reader stream built for {W} workers runs in {n_workers}")
        # The DataLoader asks worker 0 first, and batch k belongs to reader k % W: rotate.
        reader = (worker + k) % W
        made = k // W + (1 if reader < k % W else 0)          # batches this reader made before batch k
        buf: list = []
        try:
            for item in self._samples(reader, made * self.B):
                buf.append(item)
                if len(buf) == self.B:
                    yield _collate(buf)
                    buf = []
        except DataError as e:
            if info is None:
                raise
            # hand the error to the main process as data: re-raised there with its message only, not
            # wrapped in the DataLoader's "Caught ... in DataLoader worker" traceback text
            yield {"error": (type(e).__name__, str(e))}
            return
        if buf:
            yield _collate(buf)


def _collate(items) -> dict:
    """Stays numpy in the stored dtype: a DataLoader worker pickles it to the main process, which for
    small arrays is far cheaper than sharing tensors through shared memory (file descriptors per tensor)."""
    out = {"tokens": np.stack([t for t, _, _, _ in items]),                               # [B, T+1]
           "index": np.array([i for _, _, i, _ in items], dtype=np.int64),
           "epoch": np.array([e for _, _, _, e in items], dtype=np.int64)}
    if items[0][1] is not None:
        out["mask"] = np.stack([m for _, m, _, _ in items])                                # [B, T] bool
    return out


def _keep(batch):
    return batch


class ShardLoader:
    """Iterable of micro-batches ``{"input_ids": LongTensor [B, T], "labels": LongTensor [B, T]}``.

    ``labels[b, t]`` is the token that follows ``input_ids[b, t]`` in the corpus (so ``labels[:, :-1] ==
    input_ids[:, 1:]``); documents are packed back to back, separated by the tokenizer's EOS, and no label
    is masked (no -100), except in task shards with a loss mask (format.py), where masked labels are -100.
    ``iter()`` continues from the current position (one live iterator at a time); ``state_dict()`` is the
    position after the batches handed out so far.
    """

    def __init__(self, manifest: Manifest, plan: _Plan, micro_batch: int, workers: int, shuffle_buffer: int,
                 start_epoch: int, batches: int, epoch: int, epochs: Optional[int], return_index: bool):
        self.manifest, self.plan = manifest, plan
        self.micro_batch, self.workers, self.shuffle_buffer = micro_batch, workers, shuffle_buffer
        self.start_epoch, self.batches, self.epoch, self.epochs = start_epoch, batches, epoch, epochs
        self.return_index = return_index

    def __iter__(self) -> Iterator[dict]:
        ds = _ReaderStream(self.plan, self.micro_batch, self.shuffle_buffer, self.start_epoch, self.batches,
                           self.epochs)
        # fork: a worker starts in milliseconds and needs nothing from CUDA; under spawn (the default in
        # processes that were themselves spawned) each start re-imports torch, seconds per worker
        ctx = "fork" if self.workers and "fork" in mp.get_all_start_methods() else None
        dl = DataLoader(ds, batch_size=None, num_workers=self.workers, multiprocessing_context=ctx,
                        collate_fn=_keep)
        for raw in dl:
            if "error" in raw:
                kind, msg = raw["error"]
                raise getattr(errors, kind, DataError)(msg)
            tokens = torch.from_numpy(raw["tokens"].astype(np.int64))                    # [B, T+1]
            batch = {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}
            if "mask" in raw:
                batch["labels"][~torch.from_numpy(raw["mask"])] = -100
            if self.return_index:
                batch["index"], batch["epoch"] = torch.from_numpy(raw["index"]), torch.from_numpy(raw["epoch"])
            self.batches += 1
            self.epoch = int(raw["epoch"].max())
            yield batch

    @property
    def samples(self) -> int:
        """Samples this DP rank has handed out (full micro-batches in an infinite stream)."""
        return self.batches * self.micro_batch

    def state_dict(self) -> dict:
        p = self.plan
        return {"version": POSITION_VERSION, "start_epoch": self.start_epoch, "batches": self.batches,
                "samples": self.samples, "epoch": self.epoch, "micro_batch": self.micro_batch, "seed": p.seed,
                "dp_rank": p.dp_rank, "dp_size": p.dp_size, "workers": p.readers,
                "shuffle_buffer": self.shuffle_buffer, "shards": self.manifest.fingerprint}


def _readers(m: Manifest, dp_size: int, workers: int) -> int:
    """Readers per DP rank: every reader needs a shard of its own, else it would hang or repeat samples."""
    n = len(m.shards)
    want = max(1, workers)
    if n < dp_size:
        raise DataError(
            f"{m.dir} has {n} shards for {dp_size} data-parallel ranks: every DP rank needs at least one shard "
            f"(at least {dp_size} x {want} workers = {dp_size * want} to keep all workers busy). Re-create it "
            f"with tools/make_shards.py --samples-per-shard <= {max(1, m.total_samples // (dp_size * want))}")
    if n < dp_size * want:
        fit = n // dp_size
        warnings.warn(
            f"{m.dir} has {n} shards for {dp_size} data-parallel ranks x {want} workers = {dp_size * want} "
            f"readers; using {fit} worker(s) per rank. For {want}, re-create it with tools/make_shards.py "
            f"--samples-per-shard <= {max(1, m.total_samples // (dp_size * want))}", stacklevel=3)
        return fit
    return want


def _restore(position: dict, expect: dict) -> tuple[int, int, int]:
    """Check a saved position against this loader; return (start_epoch, batches, epoch)."""
    if not isinstance(position, dict) or position.get("version") != POSITION_VERSION:
        raise DataError(f"data position {position!r} is not a loader state_dict (version {POSITION_VERSION})")
    for key, value in expect.items():
        if position.get(key) != value:
            raise DataError(f"the data position was saved with {key}={position.get(key)!r}, this loader has "
                            f"{key}={value!r}; an exact resume needs the same value (or start the data afresh "
                            f"with position=None)")
    if position["samples"] != position["batches"] * position["micro_batch"]:
        raise DataError(f"data position {position!r}: samples != batches x micro_batch")
    return int(position["start_epoch"]), int(position["batches"]), int(position["epoch"])


def build_loader(shard_dir, dp_rank: int, dp_size: int, micro_batch: int, seed: int = 0, epoch: int = 0,
                 workers: int = 2, shuffle_buffer: int = 1000, position: Optional[dict] = None,
                 epochs: Optional[int] = None, return_index: bool = False) -> ShardLoader:
    """The micro-batch stream of data-parallel rank ``dp_rank`` of ``dp_size`` (see the module docstring).

    shard_dir:      a folder written by ``tools/make_shards.py`` (checked now, before any reading).
    micro_batch:    B, samples per batch; each batch is ``{"input_ids", "labels"}``, LongTensor ``[B, T]``.
    seed, epoch:    the data order: ``epoch`` is the first epoch of a fresh stream; with ``position`` the
                    saved stream continues and ``epoch`` is not used.
    workers:        DataLoader worker processes (0: read in this process, as one reader).
    shuffle_buffer: samples held by each reader's shuffle buffer (0 or 1: shard order); memory per worker
                    about ``shuffle_buffer x (T + 1)`` stored tokens (2 or 4 bytes each).
    position:       ``ShardLoader.state_dict()`` of an earlier run: continue exactly after its last batch.
    epochs:         None: an infinite stream; n: stop after n epochs (an evaluation pass), last batch short.
    return_index:   also yield ``"index"`` (global sample indices, ``[B]``) and ``"epoch"`` (``[B]``).

    Performs no collective; every rank raises the same error for a bad folder or setting.
    """
    if not 0 <= dp_rank < dp_size:
        raise DataError(f"dp_rank {dp_rank} is not in [0, dp_size={dp_size})")
    if micro_batch < 1 or workers < 0 or seed < 0 or epoch < 0:
        raise DataError(f"micro_batch ({micro_batch}) must be >= 1; workers ({workers}), seed ({seed}) and "
                        f"epoch ({epoch}) >= 0")
    # the tars' layout is checked by the entry points before any process group exists (statex_dist.train,
    # statex_dist.eval); each sample read here is checked as it is decoded
    m = check_shards(shard_dir, layout=False)
    readers = _readers(m, dp_size, workers)
    plan = _Plan(m, dp_rank, dp_size, readers, seed)
    start_epoch, batches, cur = epoch, 0, epoch
    if position is not None:
        if epochs is not None:
            raise DataError("position= resumes the infinite training stream; it cannot be combined with epochs=")
        start_epoch, batches, cur = _restore(position, {
            "micro_batch": micro_batch, "seed": seed, "dp_size": dp_size, "workers": readers,
            "shuffle_buffer": shuffle_buffer, "shards": m.fingerprint})
    return ShardLoader(m, plan, micro_batch, workers=readers if workers else 0, shuffle_buffer=shuffle_buffer,
                       start_epoch=start_epoch, batches=batches, epoch=cur, epochs=epochs,
                       return_index=return_index)
