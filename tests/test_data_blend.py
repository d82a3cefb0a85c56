"""Blends of shard folders (data.train "0.7 A 0.3 B"): the realised weights, an order that does not depend
on the DP size, and resume to the sample."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from statex_dist.data import DataError, build_loader
from statex_dist.data.blend import Chooser, counts_before, parse_blend
from statex_dist.data.synthetic import write_corpus
from statex_dist.data.writer import ShardOptions, make_shards

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("blend")
    for name, seed, n in (("a", 1, 12), ("b", 2, 6)):
        corpus = write_corpus(root / f"in-{name}", n_files=2, docs_per_file=n, seed=seed, words=(40, 120))
        make_shards(corpus, root / name, ShardOptions(seq_len=16, samples_per_shard=8), progress=False)
    return root / "a", root / "b"


def _ids(batches) -> list[tuple[int, int, int]]:
    return [t for b in batches for t in zip(b["source"].tolist(), b["index"].tolist(), b["epoch"].tolist())]


def _take(loader, n):
    it = iter(loader)
    return [next(it) for _ in range(n)]


def test_weights_realised_over_10000_samples(folders):
    a, b = folders
    loader = build_loader(f"0.7 {a} 0.3 {b}", dp_rank=0, dp_size=1, micro_batch=50, seed=3, workers=0,
                          shuffle_buffer=16, return_index=True)
    ids = _ids(_take(loader, 200))
    src = np.array([s for s, _, _ in ids])
    assert len(src) == 10_000 and abs((src == 0).mean() - 0.7) < 0.01 and abs((src == 1).mean() - 0.3) < 0.01
    # the smaller folder is read again and again: every one of its samples, each epoch once
    n_b = json.loads((b / "manifest.json").read_text())["total_samples"]
    first_b = [i for s, i, e in ids if s == 1 and e == 0]
    assert sorted(first_b) == list(range(n_b))
    # the sequence itself: within one sample of w * n at every n, and resumable from any n by counting
    ch = Chooser([0.7, 0.3], 0)
    seq = [ch.next() for _ in range(1000)]
    for n in (1, 7, 333, 1000):
        assert abs(seq[:n].count(0) - 0.7 * n) <= 1 and counts_before([0.7, 0.3], n) == [seq[:n].count(0),
                                                                                           seq[:n].count(1)]
    later = Chooser([0.7, 0.3], 500)
    assert [later.next() for _ in range(500)] == seq[500:]


def test_dp1_dp2_same_order_and_resume(folders):
    a, b = folders
    spec = f"0.7 {a} 0.3 {b}"
    kw = dict(seed=5, workers=0, shuffle_buffer=16, return_index=True, global_batch=8)
    one = _ids(_take(build_loader(spec, dp_rank=0, dp_size=1, micro_batch=8, **kw), 40))
    ranks = [_take(build_loader(spec, dp_rank=r, dp_size=2, micro_batch=4, **kw), 40) for r in range(2)]
    two = []
    for b0, b1 in zip(*ranks):   # rank r holds the step's samples g with g % 2 == r, in g order
        for x, y in zip(_ids([b0]), _ids([b1])):
            two += [x, y]
    assert one == two and {s for s, _, _ in one} == {0, 1}
    # resume at DP=2 from a DP=1 position after 13 steps: the samples DP=1 would have read next
    first = build_loader(spec, dp_rank=0, dp_size=1, micro_batch=8, **kw)
    _take(first, 13)
    pos = json.loads(json.dumps(first.state_dict()))
    resumed = [_take(build_loader(spec, dp_rank=r, dp_size=2, micro_batch=4, position=pos, **kw), 10) for r in range(2)]
    merged = []
    for b0, b1 in zip(*resumed):
        for x, y in zip(_ids([b0]), _ids([b1])):
            merged += [x, y]
    assert merged == one[13 * 8: 23 * 8]
    # another weight is another data order: the saved position refuses it
    with pytest.raises(DataError, match="the data position was saved with shards="):
        build_loader(f"0.5 {a} 0.5 {b}", dp_rank=0, dp_size=1, micro_batch=8, position=pos, **kw)


def test_blend_spec_errors(folders, tmp_path):
    a, b = folders
    assert parse_blend(str(a)) == [(1.0, str(a))] and parse_blend(f"2 {a} 1 {b}") == [(2.0, str(a)), (1.0, str(b))]
    with pytest.raises(DataError, match="expected weights and folders alternating"):
        parse_blend(f"0.7 {a} {b}")
    with pytest.raises(DataError, match=r"'x' is not a weight"):
        parse_blend(f"x {a} 1 {b}")
    with pytest.raises(DataError, match=r"weight -1 of .* must be a number > 0"):
        parse_blend(f"-1 {a} 1 {b}")
    corpus = write_corpus(tmp_path / "in", n_files=1, docs_per_file=20, seed=9)
    make_shards(corpus, tmp_path / "c", ShardOptions(seq_len=32, samples_per_shard=8), progress=False)
    with pytest.raises(DataError, match=r"data blend: .*/c has seq_len 32, .*/a has 16"):
        build_loader(f"1 {a} 1 {tmp_path / 'c'}", dp_rank=0, dp_size=1, micro_batch=2)
