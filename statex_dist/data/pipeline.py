"""The training data stream: webdataset shards -> micro-batches, in an order that does not depend on the
layout (DP size, micro-batch, loader workers), resumable at any layout.

Virtual readers. The corpus is read by ``V`` *virtual readers* (``data.virtual_readers``; by default the
largest power of two <= min(64, shards), a function of the data alone), fixed for the life of a run. In
epoch ``e`` the shard list is permuted with ``(seed, e)``; reader ``v`` reads every ``V``-th shard of it
from ``v``, through its own shuffle buffer (``shuffle_buffer // V`` samples) seeded with ``(seed, e, v)``
and emptied at the end of the epoch, then goes on to epoch ``e + 1``: an infinite stream, a pure function
of (manifest, seed, V, shuffle_buffer).

Global order. Sample ``i`` of reader ``v`` is global sample ``g = i * V + v``; optimizer step ``k`` trains
on the global samples ``[k * G, (k + 1) * G)`` (``G = data.global_batch``). So a run resumed at DP=4 reads
exactly the samples the DP=2 run would have read next (MosaicML Streaming's "canonical nodes" idea). Over
one epoch of every reader, every sample is read once. Readers whose shards hold more samples reach the
next epoch later; across epochs the permutation evens this out.

Who reads what. DP rank ``r`` of ``dp`` runs the readers ``v = r, r + dp, ...`` (``dp`` must divide V):
its share of step ``k`` is the samples with ``g % dp == r``, ``G / dp`` of them, cut in global order into
the step's micro-batches. Its DataLoader worker ``w`` of ``W`` runs the ``w``-th, ``(w + W)``-th, ... of
those readers (``dp x W`` must divide V) and hands over one chunk per step (its readers' samples of that
step); the DataLoader yields chunks round robin, so the main process takes ``W`` chunks per step and
merges them by ``g``. Every TP / PP rank runs its own readers (no collective on the data path; the price
is TP x PP reads of each shard).

Resume. The position is the number of steps handed out (and micro-batches into the current one, normally
none). Reader ``v`` skips its samples below ``k * G``: whole epochs by arithmetic on the manifest's sample
counts (no reading), the rest read again and dropped before decoding; at most one epoch's share of one
reader per reader. Exact resume needs the same shards, seed, V, global batch and shuffle buffer (any change
is refused with the field named); DP size, micro-batch and workers may change.

Blends (``statex_dist/data/blend.py``). Several folders at weights: every folder is read by the same ``V``
virtual readers, each with its own epochs; blended reader ``v`` takes its samples from the folders' readers
``v`` in the blend's fixed sequence. So the global order, the DP split and the resume are those of one folder,
and a folder's skip on resume is a count that the weights give.

Remote folders (``statex_dist/data/remote.py``): the same readers stream the tars from the server.
"""
from __future__ import annotations

import functools
import hashlib
import multiprocessing as mp
import multiprocessing.util as mp_util
import os
import random
import signal
from itertools import islice
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from statex_dist.data import errors, remote
from statex_dist.data.blend import Blend, Chooser, check_blend, counts_before
from statex_dist.data.errors import DataError, ShardError
from statex_dist.data.format import Manifest

POSITION_VERSION = 2
MAX_AUTO_READERS = 64


class _Every:
    """webdataset splitter: every ``step``-th shard from ``start`` (``_Every(0, 1)``: all of them, where
    webdataset would otherwise split a reader's shards again by DataLoader worker)."""

    def __init__(self, start: int, step: int):
        self.start, self.step = start, step

    def __call__(self, src):
        yield from islice(src, self.start, None, self.step)


def _shard_error(exn: Exception) -> bool:
    """webdataset handler: name the shard file. webdataset appends the url to ``args`` once it knows it."""
    if isinstance(exn, ShardError):  # its message is whole; webdataset appended the stream and url to args
        raise ShardError(exn.args[0]) from None
    url = next((a for a in reversed(exn.args) if isinstance(a, str) and ".tar" in a), None)
    if url is None:
        raise exn
    raise ShardError(f"shard {url} is corrupt or unreadable ({type(exn).__name__}: {exn.args[0]}); "
                     f"re-create it with tools/make_shards.py") from exn


class _Plan:
    """The global order: which shards virtual reader ``v`` reads in each epoch of each folder ``d`` of the
    blend, and which of its samples fall in which step. The same on every rank and at every layout."""

    def __init__(self, blend: Blend, readers: int, seed: int, global_batch: int):
        self.blend, self.V, self.seed, self.G = blend, readers, seed, global_batch
        self.ms = blend.manifests

    @property
    def m(self) -> Manifest:
        return self.ms[0]

    def order(self, epoch: int, d: int = 0) -> list[int]:
        """All shard indices of folder ``d`` in epoch order."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.ms[d].shards)).tolist()

    def reader_shards(self, epoch: int, v: int, d: int = 0) -> list[int]:
        return self.order(epoch, d)[v::self.V]

    def reader_samples(self, epoch: int, v: int, d: int = 0) -> int:
        return sum(self.ms[d].shards[i].samples for i in self.reader_shards(epoch, v, d))

    def shuffle_seed(self, epoch: int, v: int, d: int = 0) -> int:
        key = f"{self.seed}/{epoch}/{v}" + (f"/{d}" if d else "")
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")

    def before(self, step: int, v: int) -> int:
        """Samples of reader ``v`` in the steps before ``step``: the ``i`` with ``i * V + v < step * G``."""
        return max(0, -(-(step * self.G - v) // self.V))


def _check_counts(src, m: Manifest, urls: list[str]):
    """Pass samples through; fail naming the shard when one holds fewer / more samples than the manifest."""
    expected = {s.url: s.samples for s in m.shards}
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
    """Runs in each DataLoader worker: its virtual readers, one chunk per step.

    Yields numpy ``{"tokens": [n, T+1] (stored dtype), "g": [n], "index": [n], "epoch": [n]}`` (``n`` may
    be 0: a step can hold none of this worker's readers' samples) or ``{"n": 0}``.
    """

    def __init__(self, plan: _Plan, readers: list[int], workers: int, shuffle_buffer: int, start_step: int,
                 epochs: Optional[int], start_epoch: int):
        self.plan, self.readers, self.W, self.buffer = plan, readers, workers, shuffle_buffer // plan.V
        self.start_step, self.epochs, self.start_epoch = start_step, epochs, start_epoch

    def _epoch_samples(self, epoch: int, v: int, d: int):
        import webdataset as wds
        remote.install()
        p = self.plan
        m = p.ms[d]
        mine = [m.shards[i].url for i in p.reader_shards(epoch, v, d)]
        ds = wds.WebDataset(mine, handler=_shard_error, shardshuffle=False, empty_check=False,
                            nodesplitter=_Every(0, 1), workersplitter=_Every(0, 1))
        ds = ds.compose(lambda src: _check_counts(src, m, mine))
        if self.buffer > 1:
            ds = ds.shuffle(self.buffer, initial=self.buffer, rng=random.Random(p.shuffle_seed(epoch, v, d)))
        return ds

    def _folder_samples(self, v: int, skip: int, d: int) -> Iterator[tuple]:
        """(tokens [T+1], loss mask [T] or None, sample key, epoch, d) of folder ``d``'s reader ``v``, after its
        first ``skip``."""
        p, e = self.plan, self.start_epoch
        m = p.ms[d]
        end = None if self.epochs is None else self.start_epoch + self.epochs
        while end is None or e < end:
            n = p.reader_samples(e, v, d)
            if skip >= n:          # a whole epoch already consumed: skip it without reading
                skip, e = skip - n, e + 1
                continue
            for s in islice(iter(self._epoch_samples(e, v, d)), skip, None):
                yield m.decode(s), m.decode_mask(s), int(s["__key__"]), e, d
            skip, e = 0, e + 1

    def _samples(self, v: int, skip: int) -> Iterator[tuple]:
        """Blended reader ``v`` after its first ``skip`` samples (one folder: that folder's reader)."""
        weights = self.plan.blend.weights
        if len(weights) == 1:
            yield from self._folder_samples(v, skip, 0)
            return
        streams = [self._folder_samples(v, n, d) for d, n in enumerate(counts_before(weights, skip))]
        chooser = Chooser(weights, skip)
        while True:
            yield next(streams[chooser.next()])

    def __iter__(self):
        info = get_worker_info()
        worker, n_workers = (0, 1) if info is None else (info.id, info.num_workers)
        if n_workers != self.W:
            raise DataError(f"reader stream built for {self.W} workers runs in {n_workers}")
        p, k = self.plan, self.start_step
        mine = self.readers[worker::self.W]
        streams = {v: self._samples(v, p.before(k, v)) for v in mine}
        try:
            while streams:
                chunk = []
                for v in list(streams):
                    first, n = p.before(k, v), p.before(k + 1, v) - p.before(k, v)
                    got = list(islice(streams[v], n))
                    chunk += [((first + j) * p.V + v, item) for j, item in enumerate(got)]
                    if len(got) < n:      # a finite stream (epochs=) that has ended
                        del streams[v]
                yield _collate(chunk)
                k += 1
        except DataError as e:
            if info is None:
                raise
            # hand the error to the main process as data: re-raised there with its message only, not
            # wrapped in the DataLoader's "Caught ... in DataLoader worker" traceback text
            yield {"error": (type(e).__name__, str(e))}


def _collate(chunk) -> dict:
    """Stays numpy in the stored dtype: a DataLoader worker pickles it to the main process, which for
    small arrays is far cheaper than sharing tensors through shared memory (file descriptors per tensor)."""
    if not chunk:
        return {"n": 0}
    items = [it for _, it in chunk]
    out = {"tokens": np.stack([it[0] for it in items]),                                   # [n, T+1]
           "g": np.array([g for g, _ in chunk], dtype=np.int64),
           "index": np.array([it[2] for it in items], dtype=np.int64),
           "epoch": np.array([it[3] for it in items], dtype=np.int64),
           "source": np.array([it[4] for it in items], dtype=np.int64)}
    if items[0][1] is not None:
        out["mask"] = np.stack([it[1] for it in items])                                    # [n, T] bool
    return out


def _merge(chunks: list[dict]) -> Optional[dict]:
    """One step's chunks (one per worker) as arrays in global order; None when they hold no sample."""
    full = [c for c in chunks if c.get("n", 1)]
    if not full:
        return None
    out = {k: np.concatenate([c[k] for c in full]) for k in full[0]}
    order = np.argsort(out["g"], kind="stable")
    return {k: a[order] for k, a in out.items()}


_rank_exiting = None   # set when this process exits; made before its first loader worker forks


def _exiting_event():
    """An event the workers share with their rank, set when the rank exits: by a multiprocessing finalizer,
    which runs before multiprocessing terminates the workers with SIGTERM, in a main process (at exit) and
    in a process multiprocessing started (which runs no ``atexit`` function) alike."""
    global _rank_exiting
    if _rank_exiting is None:
        _rank_exiting = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None).Event()
        mp_util.Finalize(None, _rank_exiting.set, exitpriority=100)
    return _rank_exiting


def _stop_signal(exiting, signum, frame) -> None:
    if exiting.is_set():   # the rank is exiting and terminates its workers: go
        os._exit(0)
    # else a scheduler's warning, sent to every process of the job: the rank checkpoints first and may need
    # this worker's batches for the step it is in; it ends the worker when it is done


def _leave_stop_signals_to_the_rank(exiting, worker_id: int) -> None:
    """A loader worker leaves a scheduler's stop signals to its rank (torch makes SIGTERM fatal to it, which
    makes the rank fail at once): see statex_dist.training.preemption. A worker whose rank is gone exits on
    its own (torch's watchdog)."""
    for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(s, functools.partial(_stop_signal, exiting))


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

    def __init__(self, manifest: Blend, plan: _Plan, dp_rank: int, dp_size: int, micro_batch: int,
                 workers: int, shuffle_buffer: int, start_epoch: int, steps: int, partial: int,
                 epochs: Optional[int], return_index: bool):
        self.manifest, self.plan, self.dp_rank, self.dp_size = manifest, plan, dp_rank, dp_size
        self.micro_batch, self.workers, self.shuffle_buffer = micro_batch, workers, shuffle_buffer
        self.per_step = plan.G // dp_size // micro_batch     # this rank's micro-batches per step
        self.start_epoch, self.epochs, self.return_index = start_epoch, epochs, return_index
        self.batches = steps * self.per_step + partial       # handed out since step 0 of the run
        self.epoch = start_epoch

    def __iter__(self) -> Iterator[dict]:
        step, partial = divmod(self.batches, self.per_step)
        W = max(1, self.workers)
        ds = _ReaderStream(self.plan, list(range(self.dp_rank, self.plan.V, self.dp_size)), W,
                           self.shuffle_buffer, step, self.epochs, self.start_epoch)
        # fork: a worker starts in milliseconds and needs nothing from CUDA; under spawn (the default in
        # processes that were themselves spawned) each start re-imports torch, seconds per worker
        ctx = "fork" if self.workers and "fork" in mp.get_all_start_methods() else None
        init = functools.partial(_leave_stop_signals_to_the_rank, _exiting_event())
        chunks = iter(DataLoader(ds, batch_size=None, num_workers=self.workers, multiprocessing_context=ctx,
                                 collate_fn=_keep, worker_init_fn=init))
        B, drop, pending = self.micro_batch, partial * self.micro_batch, None
        while True:
            got = list(islice(chunks, W))          # one step: a chunk from each worker, round robin
            for raw in got:
                if "error" in raw:
                    kind, msg = raw["error"]
                    raise getattr(errors, kind, DataError)(msg)
            if not got:
                break
            step_samples = _merge(got)
            if step_samples is None:
                continue
            if drop:                               # a resume inside a step: its first micro-batches were used
                step_samples = {k: a[drop:] for k, a in step_samples.items()}
                drop = 0
            pending = step_samples if pending is None else {
                k: np.concatenate([pending[k], a]) for k, a in step_samples.items()}
            while len(pending["g"]) >= B:
                yield self._batch({k: a[:B] for k, a in pending.items()})
                pending = {k: a[B:] for k, a in pending.items()}
        if pending is not None and len(pending["g"]):  # the end of a finite pass: a short last batch
            yield self._batch(pending)

    def _batch(self, raw: dict) -> dict:
        tokens = torch.from_numpy(raw["tokens"].astype(np.int64))                        # [B, T+1]
        batch = {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}
        if "mask" in raw:
            batch["labels"][~torch.from_numpy(raw["mask"])] = -100
        if self.return_index:
            batch["index"], batch["epoch"] = torch.from_numpy(raw["index"]), torch.from_numpy(raw["epoch"])
            if len(self.plan.ms) > 1:
                batch["source"] = torch.from_numpy(raw["source"])  # which folder of the blend
        self.batches += 1
        self.epoch = max(self.epoch, int(raw["epoch"].max()))
        return batch

    def state_dict(self) -> dict:
        """The position: the same on every DP rank, and valid at any layout when it falls between steps."""
        p = self.plan
        steps, partial = divmod(self.batches, self.per_step)
        return {"version": POSITION_VERSION, "start_epoch": self.start_epoch, "steps": steps, "batches": self.batches,
                "samples": self.batches * self.micro_batch,
                "partial": partial, "epoch": self.epoch, "seed": p.seed, "virtual_readers": p.V,
                "global_batch": p.G, "shuffle_buffer": self.shuffle_buffer, "shards": self.manifest.fingerprint,
                # only a resume inside a step needs these to match
                "dp_size": self.dp_size, "micro_batch": self.micro_batch}


def auto_readers(m: Manifest) -> int:
    """The default number of virtual readers: the largest power of two <= min(64, shards), so that any
    power-of-two DP x workers up to it splits them, and a function of the data alone."""
    n = min(MAX_AUTO_READERS, len(m.shards))
    return 1 << (n.bit_length() - 1)


def _check_split(m: Manifest, V: int, auto: bool, dp_size: int, workers: int) -> None:
    """Every DP rank and worker needs an equal share of the virtual readers, and every reader a shard."""
    n = len(m.shards)
    origin = f"{V} (from its {n} shards; data.virtual_readers sets it)" if auto else f"{V} (data.virtual_readers)"
    if V > n:
        raise DataError(f"{m.dir} has {n} shards for data.virtual_readers={V}: every virtual reader needs a "
                        f"shard; use data.virtual_readers <= {n}, or re-create the shards with tools/make_shards.py "
                        f"--samples-per-shard <= {max(1, m.total_samples // V)}")
    W = max(1, workers)
    if V % dp_size:
        raise DataError(f"the data order of {m.dir} has {V} virtual readers, set when the run started: "
                        f"{origin}; {dp_size} data-parallel ranks cannot split them evenly. Use a DP size that "
                        f"divides {V}, or start a run with data.virtual_readers a multiple of {dp_size} "
                        f"(at most the {n} shards)")
    if V % (dp_size * W):
        fit = max(w for w in range(1, W + 1) if V % (dp_size * w) == 0)
        raise DataError(f"the data order of {m.dir} has {V} virtual readers ({origin}): {dp_size} data-parallel "
                        f"ranks x {W} workers cannot split them evenly; use data.workers={fit} (the order does "
                        f"not depend on it)")


def _restore(position: dict, expect: dict, layout: dict) -> tuple[int, int, int]:
    """Check a saved position against this loader; return (start_epoch, steps, partial micro-batches)."""
    if not isinstance(position, dict) or position.get("version") != POSITION_VERSION:
        raise DataError(f"data position {position!r} is not a loader state_dict (version {POSITION_VERSION}); "
                        f"a checkpoint from before the layout-free data order: resume it with the version "
                        f"that wrote it, or start the data afresh")
    for key, value in expect.items():
        if position.get(key) != value:
            raise DataError(f"the data position was saved with {key}={position.get(key)!r}, this loader has "
                            f"{key}={value!r}; an exact resume needs the same value (or start the data afresh "
                            f"with position=None)")
    if position["partial"]:
        for key, value in layout.items():
            if position.get(key) != value:
                raise DataError(f"the data position is {position['partial']} micro-batches into step "
                                f"{position['steps']}, saved with {key}={position.get(key)!r}; this loader has "
                                f"{key}={value!r}: resume inside a step at the same layout")
    return int(position["start_epoch"]), int(position["steps"]), int(position["partial"])


def build_loader(shard_dir, dp_rank: int, dp_size: int, micro_batch: int, seed: int = 0, epoch: int = 0,
                 workers: int = 2, shuffle_buffer: int = 1000, position: Optional[dict] = None,
                 epochs: Optional[int] = None, return_index: bool = False, global_batch: Optional[int] = None,
                 virtual_readers: Optional[int] = None) -> ShardLoader:
    """The micro-batch stream of data-parallel rank ``dp_rank`` of ``dp_size`` (see the module docstring).

    shard_dir:       a folder written by ``tools/make_shards.py`` (checked now, before any reading), an
                     http(s):// or pipe: location of one, or a blend "W1 FOLDER1 W2 FOLDER2 ..." (blend.py).
    micro_batch:     B, samples per batch; each batch is ``{"input_ids", "labels"}``, LongTensor ``[B, T]``.
    seed, epoch:     the data order: ``epoch`` is the first epoch of a fresh stream; with ``position`` the
                     saved stream continues and ``epoch`` is not used.
    workers:         DataLoader worker processes (0: read in this process); does not change the order.
    shuffle_buffer:  samples held by all the virtual readers' shuffle buffers together (each holds
                     ``shuffle_buffer // V``; 0 or < V: shard order); memory per worker about its readers'
                     share x (T + 1) stored tokens (2 or 4 bytes each).
    position:        ``ShardLoader.state_dict()`` of an earlier run: continue exactly after its last batch.
    epochs:          None: an infinite stream; n: stop after n epochs (an evaluation pass), last batch short.
    return_index:    also yield ``"index"`` (the samples' keys, ``[B]``) and ``"epoch"`` (``[B]``).
    global_batch:    G, samples per optimizer step over all DP ranks (default ``micro_batch x dp_size``):
                     step ``k`` is global samples ``[k G, (k + 1) G)``.
    virtual_readers: V (default: the largest power of two <= min(64, shards)).

    Performs no collective; every rank raises the same error for a bad folder or setting.
    """
    G = micro_batch * dp_size if global_batch is None else global_batch
    if not 0 <= dp_rank < dp_size:
        raise DataError(f"dp_rank {dp_rank} is not in [0, dp_size={dp_size})")
    if micro_batch < 1 or workers < 0 or seed < 0 or epoch < 0:
        raise DataError(f"micro_batch ({micro_batch}) must be >= 1; workers ({workers}), seed ({seed}) and "
                        f"epoch ({epoch}) >= 0")
    if G % (micro_batch * dp_size):
        raise DataError(f"global_batch {G} is not a multiple of micro_batch {micro_batch} x dp_size {dp_size}")
    # the tars' layout is checked by the entry points before any process group exists (statex_dist.train,
    # statex_dist.eval); each sample read here is checked as it is decoded
    blend = check_blend(shard_dir, layout=False)
    V = min(auto_readers(m) for m in blend.manifests) if virtual_readers is None else virtual_readers
    if V < 1:
        raise DataError(f"data.virtual_readers must be >= 1, got {V}")
    for m in blend.manifests:
        _check_split(m, V, virtual_readers is None, dp_size, workers)
    if epochs is not None and len(blend.manifests) > 1:
        raise DataError("epochs= counts passes over one folder; a blend is an infinite stream (read its folders "
                        "one at a time for an evaluation pass)")
    plan = _Plan(blend, V, seed, G)
    start_epoch, steps, partial = epoch, 0, 0
    if position is not None:
        if epochs is not None:
            raise DataError("position= resumes the infinite training stream; it cannot be combined with epochs=")
        start_epoch, steps, partial = _restore(
            position, {"seed": seed, "virtual_readers": V, "global_batch": G, "shuffle_buffer": shuffle_buffer,
                       "shards": blend.fingerprint}, {"dp_size": dp_size, "micro_batch": micro_batch})
    return ShardLoader(blend, plan, dp_rank, dp_size, micro_batch, workers, shuffle_buffer, start_epoch, steps,
                       partial, epochs, return_index)
