"""The shard loader: DP split (2 DP x 2 TP real processes), an order that does not depend on the layout,
exact resume (at another layout too), and its errors."""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from statex_dist.data import DataError, MissingDataError, ShardError, build_loader, check_shards
from statex_dist.data.synthetic import write_corpus
from statex_dist.data.writer import ShardOptions, make_shards
from tests.dist_utils import run_workers
from tests.test_data_shards import read_tar_samples

pytestmark = pytest.mark.timeout(240)
B = 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """About 640 samples of 32 tokens in about 40 shards of 16 (the last one shorter)."""
    root = tmp_path_factory.mktemp("data")
    corpus = write_corpus(root / "in", n_files=3, docs_per_file=12, seed=11, words=(40, 120))
    m = make_shards(corpus, root / "shards", ShardOptions(seq_len=32, samples_per_shard=16), progress=False)
    assert len(m["shards"]) >= 8 and m["shards"][-1]["samples"] < 16
    return root / "shards"


def _take(loader, n: int) -> list[dict]:
    it = iter(loader)
    return [next(it) for _ in range(n)]


def _indices(batches) -> list[list[int]]:
    return [b["index"].tolist() for b in batches]


def _epoch_samples(batches, epoch: int) -> list[int]:
    return [i for b in batches for i, e in zip(b["index"].tolist(), b["epoch"].tolist()) if e == epoch]


def _n_batches(shard_dir: Path, dp: int) -> int:
    """Enough batches per DP rank for every reader to finish epoch 0 (readers go at different paces)."""
    total = json.loads((shard_dir / "manifest.json").read_text())["total_samples"]
    return 3 * (total // (dp * B) + 1)


# --- 2 DP x 2 TP, real processes over gloo ----------------------------------------------------------------
def _dp_tp_worker(rank, world, shard_dir, n, k):
    from megatron.core import parallel_state as ps

    from statex_dist.parallel import state
    state.initialize(2, 1)
    try:
        dp_rank, dp = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        kw = dict(dp_rank=dp_rank, dp_size=dp, micro_batch=B, seed=7, workers=2, shuffle_buffer=8, return_index=True)
        batches = _take(build_loader(shard_dir, **kw), n)
        first = build_loader(shard_dir, **kw)
        _take(first, k)
        resumed = _take(build_loader(shard_dir, position=json.loads(json.dumps(first.state_dict())), **kw), 4)
        return {"dp_rank": dp_rank, "tp_rank": state.tp_rank(), "index": _indices(batches),
                "epoch": [b["epoch"].tolist() for b in batches],
                "ids": [b["input_ids"] for b in batches], "labels": [b["labels"] for b in batches],
                "resumed": _indices(resumed)}
    finally:
        state.destroy()


def test_dp_split_over_tp_groups(shards, tmp_path):
    n, k = _n_batches(shards, 2), 9
    res = run_workers(_dp_tp_worker, 4, str(shards), n, k, tmp_path=tmp_path)
    assert [(r["dp_rank"], r["tp_rank"]) for r in res] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    # both TP ranks of a replica: the same samples in the same order
    for a, b in ((0, 1), (2, 3)):
        assert res[a]["index"] == res[b]["index"] and res[a]["epoch"] == res[b]["epoch"]
        assert all(torch.equal(x, y) for x, y in zip(res[a]["ids"], res[b]["ids"]))
    # one epoch over the DP ranks: the whole corpus, no duplicates; and the replicas differ
    total = check_shards(shards).total_samples
    counts = Counter(_epoch_samples(_as_batches(res[0]), 0) + _epoch_samples(_as_batches(res[2]), 0))
    assert sorted(counts) == list(range(total)) and set(counts.values()) == {1}
    assert not set(_epoch_samples(_as_batches(res[0]), 0)) & set(_epoch_samples(_as_batches(res[2]), 0))
    # the tokens are the shard's tokens; labels are the next tokens
    ref = read_tar_samples(shards)
    for r in (res[0], res[2]):
        for idx, ids, labels in zip(r["index"][:5], r["ids"][:5], r["labels"][:5]):
            for row, i in enumerate(idx):
                np.testing.assert_array_equal(ids[row].numpy(), ref[i][:-1])
                np.testing.assert_array_equal(labels[row].numpy(), ref[i][1:])
    # resume after k batches = the uninterrupted stream from batch k, on every rank
    for r in res:
        assert r["resumed"] == r["index"][k:k + 4]


def _as_batches(r) -> list[dict]:
    return [{"index": torch.tensor(i), "epoch": torch.tensor(e)} for i, e in zip(r["index"], r["epoch"])]


# --- resume, in one process ---------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", [2, 0])
def test_resume_equals_uninterrupted(shards, workers):
    kw = dict(dp_rank=1, dp_size=2, micro_batch=B, seed=3, workers=workers, shuffle_buffer=16, return_index=True)
    n = _n_batches(shards, 2)
    ref = _take(build_loader(shards, **kw), n)
    assert len({e for b in ref for e in b["epoch"].tolist()}) >= 2      # the stream crosses an epoch
    for k in (0, 1, 3, n // 3, n - 6):
        first = build_loader(shards, **kw)
        _take(first, k)
        state = first.state_dict()
        assert state["batches"] == k and state["samples"] == k * B
        again = _take(build_loader(shards, position=json.loads(json.dumps(state)), **kw), 5)
        assert _indices(again) == _indices(ref[k:k + 5]), k
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(again, ref[k:k + 5]))
    # a second iter() goes on from where the first stopped
    loader = build_loader(shards, **kw)
    _take(loader, 3)
    assert _indices(_take(loader, 4)) == _indices(ref[3:7])


def test_loader_defaults_and_order(shards):
    loader = build_loader(shards, dp_rank=0, dp_size=1, micro_batch=B, workers=0, shuffle_buffer=0)
    b = next(iter(loader))
    assert set(b) == {"input_ids", "labels"} and b["input_ids"].shape == b["labels"].shape == (B, 32)
    assert b["input_ids"].dtype == b["labels"].dtype == torch.int64
    assert torch.equal(b["labels"][:, :-1], b["input_ids"][:, 1:])
    # no shuffle buffer, one virtual reader: shard order
    b = next(iter(build_loader(shards, 0, 1, micro_batch=B, workers=0, shuffle_buffer=0, return_index=True,
                               virtual_readers=1)))
    assert np.all(np.diff(b["index"].numpy()) == 1)
    n = len(check_shards(shards).shards)
    auto = build_loader(shards, 0, 1, micro_batch=B).state_dict()["virtual_readers"]
    assert auto <= n < 2 * auto and auto & (auto - 1) == 0       # the largest power of two <= the shards
    # other seeds or epochs: other orders
    one = _indices(_take(build_loader(shards, 0, 1, B, seed=1, workers=0, return_index=True), 4))
    two = _indices(_take(build_loader(shards, 0, 1, B, seed=2, workers=0, return_index=True), 4))
    three = _indices(_take(build_loader(shards, 0, 1, B, seed=1, epoch=1, workers=0, return_index=True), 4))
    assert one != two and one != three


def test_finite_epochs_pass(shards):
    total = check_shards(shards).total_samples
    seen = []
    for r in range(2):
        for b in build_loader(shards, r, 2, micro_batch=B, workers=2, epochs=1, return_index=True):
            seen += b["index"].tolist()
    assert sorted(seen) == list(range(total))


def test_position_mismatch_refused(shards):
    loader = build_loader(shards, 0, 2, micro_batch=B, seed=5, workers=2, global_batch=16)
    _take(loader, 4)                     # 2 steps of 2 micro-batches
    state = loader.state_dict()
    assert (state["steps"], state["partial"]) == (2, 0)
    for change, msg in (({"global_batch": 8}, "saved with global_batch=16, this loader has global_batch=8"),
                        ({"seed": 6}, "saved with seed=5, this loader has seed=6"),
                        ({"virtual_readers": 4}, f"saved with virtual_readers={state['virtual_readers']}, this loader has "
                                                 "virtual_readers=4"),
                        ({"shuffle_buffer": 7}, "saved with shuffle_buffer=1000, this loader has shuffle_buffer=7")):
        with pytest.raises(DataError, match=msg):
            build_loader(shards, 0, 2, **{"micro_batch": B, "seed": 5, "workers": 2, "global_batch": 16,
                                          "position": state, **change})
    # between steps, DP size, micro-batch and workers may change; inside a step they may not
    build_loader(shards, 0, 4, micro_batch=2, seed=5, workers=1, global_batch=16, position=state)
    _take(loader, 1)
    with pytest.raises(DataError, match="1 micro-batches into step 2, saved with dp_size=2; this loader has "
                                        "dp_size=4: resume inside a step at the same layout"):
        build_loader(shards, 0, 4, micro_batch=B, seed=5, workers=2, global_batch=16, position=loader.state_dict())


# --- the order does not depend on the layout ------------------------------------------------------------------
def _steps(shards, dp: int, workers: int, steps: int, position=None, **kw) -> dict[int, list[tuple[int, int]]]:
    """{step: sorted (sample id, epoch) over every DP rank} for ``steps`` steps of global batch 8, micro-batch 2."""
    out: dict[int, list[int]] = {}
    for r in range(dp):
        loader = build_loader(shards, r, dp, micro_batch=2, seed=3, workers=workers, shuffle_buffer=16,
                              global_batch=8, return_index=True, position=position, **kw)
        it, first = iter(loader), 0 if position is None else position["steps"]
        for k in range(first, first + steps):
            for _ in range(8 // dp // 2):
                b = next(it)
                out.setdefault(k, []).extend(zip(b["index"].tolist(), b["epoch"].tolist()))
    return {k: sorted(v) for k, v in out.items()}


def test_order_is_layout_free(shards):
    """The sample ids of every step are the same at DP 1, 2 and 4 with 0, 1 or 2 workers, across epochs, and a
    DP=2 run resumed at DP=4 (or DP=1) reads exactly what the DP=2 run would have read next."""
    total = check_shards(shards).total_samples
    n = 2 * total // 8 + 4                                   # into the third epoch
    ref = _steps(shards, 1, 0, n)
    seen = Counter(i for k in range(n) for i, e in ref[k] if e == 0)
    assert sorted(seen) == list(range(total)) and set(seen.values()) == {1}     # epoch 0: every sample once
    for dp in (1, 2, 4):
        for workers in (1, 2):
            assert _steps(shards, dp, workers, n) == ref, (dp, workers)
    loader = build_loader(shards, 1, 2, micro_batch=2, seed=3, workers=2, shuffle_buffer=16, global_batch=8)
    _take(loader, 2 * (total // 8 + 3))                      # DP=2: 2 micro-batches a step, into epoch 1
    position = json.loads(json.dumps(loader.state_dict()))
    k = position["steps"]
    for dp, workers in ((4, 1), (1, 2)):
        assert _steps(shards, dp, workers, 6, position=position) == {s: ref[s] for s in range(k, k + 6)}
    assert _steps(shards, 2, 2, 3, virtual_readers=4) != {s: ref[s] for s in range(3)}   # V is part of the order


# --- too few shards, bad folders, corrupt shards -------------------------------------------------------------
def _small_copy(shards: Path, dst: Path, keep: int) -> Path:
    """A shard folder with only the first ``keep`` shards (manifest rewritten to match)."""
    dst.mkdir()
    m = json.loads((shards / "manifest.json").read_text())
    m["shards"] = m["shards"][:keep]
    m["total_samples"] = sum(s["samples"] for s in m["shards"])
    for s in m["shards"]:
        shutil.copy(shards / s["file"], dst / s["file"])
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def test_fewer_shards_than_readers(shards, tmp_path):
    three = _small_copy(shards, tmp_path / "three", 3)          # 3 shards: 2 virtual readers by default
    with pytest.raises(DataError, match=r"has 2 virtual readers, set when the run started: 2 \(from its 3 shards; "
                                        r"data.virtual_readers sets it\); 4 data-parallel ranks cannot split them"):
        build_loader(three, 0, 4, micro_batch=B, workers=2)
    with pytest.raises(DataError, match=r"2 data-parallel ranks x 2 workers cannot split them evenly; use "
                                        r"data.workers=1 \(the order does not depend on it\)"):
        build_loader(three, 0, 2, micro_batch=B, workers=2)
    with pytest.raises(DataError, match=r"has 3 shards for data.virtual_readers=4: every virtual reader needs a "
                                        r"shard; use data.virtual_readers <= 3, .*--samples-per-shard <= 12"):
        build_loader(three, 0, 2, micro_batch=B, workers=1, virtual_readers=4)
    loaders = [build_loader(three, r, 2, micro_batch=B, workers=1, epochs=1, return_index=True) for r in range(2)]
    seen = [i for ld in loaders for b in ld for i in b["index"].tolist()]
    assert sorted(seen) == list(range(48))


def test_missing_folder_and_manifest(shards, tmp_path):
    with pytest.raises(MissingDataError, match=f"shard folder {tmp_path / 'nope'} does not exist"):
        build_loader(tmp_path / "nope", 0, 1, micro_batch=B)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError, match=f"{tmp_path / 'empty' / 'manifest.json'} is missing"):
        check_shards(tmp_path / "empty")
    bad = shutil.copytree(shards, tmp_path / "bad")
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json is not a valid shard manifest"):
        build_loader(bad, 0, 1, micro_batch=B)
    gone = shutil.copytree(shards, tmp_path / "gone")
    (gone / "shard-000004.tar").unlink()
    with pytest.raises(MissingDataError, match=f"shard {gone / 'shard-000004.tar'} listed in .* is missing"):
        build_loader(gone, 0, 1, micro_batch=B)
    assert issubclass(MissingDataError, FileNotFoundError) and issubclass(DataError, ValueError)


def _drain(folder: Path, workers: int) -> None:
    for _ in build_loader(folder, 0, 1, micro_batch=B, workers=workers, epochs=1):
        pass


def test_truncated_or_empty_shard(shards, tmp_path):
    for name, cut in (("trunc", lambda b: b[: len(b) // 2]), ("empty", lambda b: b"")):
        bad = shutil.copytree(shards, tmp_path / name)
        shard = bad / "shard-000002.tar"
        shard.write_bytes(cut(shard.read_bytes()))
        with pytest.raises(ShardError, match=f"shard {shard} is [0-9]+ bytes, .* says [0-9]+: truncated"):
            build_loader(bad, 0, 1, micro_batch=B)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_shard_named(shards, tmp_path, workers):
    """Same size as the manifest says, so only reading finds it; the error names the file."""
    samples_per_member = 1024      # 512-byte tar header + 66 bytes of tokens padded to 512
    cases = {
        "header0": lambda b: b"\x07" * 512 + b[512:],                                     # unreadable tar
        "header5": lambda b: b[:5 * samples_per_member] + b"\x07" * 512 + b[5 * samples_per_member + 512:],  # cut short
        "tokens": lambda b: b[:512] + b"\xff" * 66 + b[578:],                            # ids out of the vocab
    }
    for name, corrupt in cases.items():
        bad = shutil.copytree(shards, tmp_path / name)
        shard = bad / "shard-000003.tar"
        data = shard.read_bytes()
        shard.write_bytes(corrupt(data))
        assert shard.stat().st_size == len(data)
        with pytest.raises(ShardError, match=str(shard)):
            _drain(bad, workers)


# --- two epochs at DP=2 with 2 workers each ------------------------------------------------------------------------
def test_two_epochs_once_each_in_a_seeded_order_and_resumable(shards):
    total = check_shards(shards).total_samples
    n = 5 * (total // (2 * B) + 1)          # every reader of both ranks well into epoch 2
    kw = dict(dp_size=2, micro_batch=B, seed=7, workers=2, shuffle_buffer=8, return_index=True)
    streams = [_take(build_loader(shards, dp_rank=r, **kw), n) for r in range(2)]
    for e in (0, 1):
        seen = Counter(i for s in streams for i in _epoch_samples(s, e))
        assert sorted(seen) == list(range(total)) and set(seen.values()) == {1}, e
    assert max(e for s in streams for b in s for e in b["epoch"].tolist()) >= 2
    # a fresh stream from epoch 1: that epoch's samples, each once, in the same order per virtual reader
    fresh = [_take(build_loader(shards, dp_rank=r, epoch=1, **kw), n // 2) for r in range(2)]
    seen = Counter(i for s in fresh for i in _epoch_samples(s, 1))
    assert sorted(seen) == list(range(total)) and set(seen.values()) == {1}
    for r in range(2):
        # the same (seed, epoch): the same order, however the stream got there
        again = _take(build_loader(shards, dp_rank=r, **kw), n)
        assert _indices(again) == _indices(streams[r])
        assert _epoch_samples(streams[r], 0) != _epoch_samples(streams[r], 1)[:len(_epoch_samples(streams[r], 0))]
        # another seed: another order
        other = _take(build_loader(shards, dp_rank=r, **{**kw, "seed": 8}), 6)
        assert _indices(other) != _indices(streams[r][:6])
        # a resume in the middle of epoch 1 continues the stream exactly
        k = next(i for i, b in enumerate(streams[r]) if min(b["epoch"].tolist()) == 1) + 3
        first = build_loader(shards, dp_rank=r, **kw)
        _take(first, k)
        resumed = _take(build_loader(shards, dp_rank=r, position=json.loads(json.dumps(first.state_dict())), **kw),
                        n - k)
        assert _indices(resumed) == _indices(streams[r][k:]), r
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(resumed, streams[r][k:]))


_KEPT = []


def _kept_iterator_worker(rank, world, shard_dir):
    """A batch from a loader with 2 workers, its iterator kept alive until this process exits (as a reference
    cycle through a Run keeps it), then the process returns."""
    it = iter(build_loader(shard_dir, 0, 1, B, workers=2, shuffle_buffer=16))
    _KEPT.append(it)
    return next(it)["input_ids"].shape


def test_a_process_exits_with_its_loader_workers_running(tmp_path, shards):
    """Workers ignore a scheduler's SIGTERM while their rank runs (training/preemption.py), so the SIGTERM that
    multiprocessing sends them when their rank exits must end them: the rank's exit sets the event they check.
    Without it this spawned process waits for its workers for ever (run_workers' timeout then fails it)."""
    import time
    t0 = time.time()
    assert run_workers(_kept_iterator_worker, 1, shards, tmp_path=tmp_path, timeout=60) == [(B, 32)]
    assert time.time() - t0 < 60
