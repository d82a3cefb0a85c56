"""make_shards at the recipe's scale: a token budget from a seeded order, a validation split by content
hash, and a run killed at random moments that finishes with the bytes of a run never stopped."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xxhash

from statex_dist.data.synthetic import documents
from statex_dist.data.writer import ShardOptions, make_shards
from tests.test_data_shards import read_tar_samples

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(300)
T, EOS = 32, 256


def _write(folder: Path, groups: list[list[str]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, docs in enumerate(groups):
        p = folder / f"part-{i:03d}.jsonl"
        p.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        paths.append(p)
    return paths


def _stream(folder: Path) -> np.ndarray:
    """A shard folder's token stream (samples overlap by one token)."""
    samples = read_tar_samples(folder)
    return np.concatenate([samples[0]] + [samples[i][1:] for i in range(1, len(samples))])


def _docs_of(stream: np.ndarray) -> list[str]:
    cuts = np.flatnonzero(stream == EOS)
    return [bytes(stream[a + 1 if k else 0: b].astype(np.uint8)).decode() for k, (a, b) in
            enumerate(zip(np.r_[0, cuts[:-1]], cuts))]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[list[Path], list[list[str]]]:
    """Eight files of 25 documents; every fifth document of file 0 appears again in file 5."""
    groups = [documents(25, seed=100 + i, words=(5, 40)) for i in range(8)]
    groups[5] = groups[5][:20] + groups[0][::5]
    return _write(tmp_path_factory.mktemp("prep") / "in", groups), groups


def test_budget_takes_exact_tokens_in_seeded_order(corpus, tmp_path):
    paths, groups = corpus
    n = 3000
    m = make_shards(paths, tmp_path / "out", ShardOptions(seq_len=T, samples_per_shard=16, max_tokens=n, seed=7),
                    progress=False)
    order = np.random.default_rng(7).permutation(len(paths)).tolist()   # one piece a file
    joined = np.concatenate([np.append(np.frombuffer(d.encode(), np.uint8), EOS) for i in order for d in groups[i]])
    want = joined[:n]
    assert m["corpus_tokens"] == n and m["total_samples"] == (n - 1) // T
    np.testing.assert_array_equal(_stream(tmp_path / "out"), want[:m["total_samples"] * T + 1])
    assert m["documents"] == int((want == EOS).sum()) + (want[-1] != EOS)
    assert m["options"]["seed"] == 7 and m["options"]["max_tokens"] == n
    # another seed: another order, the same count
    m2 = make_shards(paths, tmp_path / "o2", ShardOptions(seq_len=T, samples_per_shard=16, max_tokens=n, seed=8),
                     progress=False)
    assert m2["corpus_tokens"] == n and _stream(tmp_path / "o2")[:200].tolist() != want[:200].tolist()


def test_valid_split_by_content_hash(corpus, tmp_path):
    paths, groups = corpus
    frac = 0.25
    opts = dict(seq_len=T, samples_per_shard=16, valid_fraction=frac)
    m = make_shards(paths, tmp_path / "a", ShardOptions(**opts), progress=False)
    v = json.loads((tmp_path / "a-valid" / "manifest.json").read_text())
    everything = [d for g in groups for d in g]
    held = [d for d in everything if xxhash.xxh3_64_intdigest(d.encode()) < int(frac * 2 ** 64)]
    assert 0 < len(held) < len(everything) // 2
    # exact counts: every document and its EOS, in one split or the other
    assert v["corpus_tokens"] == sum(len(d.encode()) + 1 for d in held) and v["documents"] == len(held)
    assert m["corpus_tokens"] + v["corpus_tokens"] == sum(len(d.encode()) + 1 for d in everything)
    assert m["valid"] == {"folder": str(tmp_path / "a-valid"), "documents": len(held),
                          "corpus_tokens": v["corpus_tokens"], "total_samples": v["total_samples"],
                          "shards": len(v["shards"])}
    # what the samples hold (all but the tail shorter than a window): each document in its hash's split
    train_docs, valid_docs = set(_docs_of(_stream(tmp_path / "a"))), set(_docs_of(_stream(tmp_path / "a-valid")))
    assert valid_docs <= set(held) and not train_docs & set(held) and len(valid_docs) >= len(set(held)) - 1
    assert set(groups[0][::5]) - valid_docs <= train_docs      # the duplicates: each in one split only
    # the same split on a rerun in another order
    make_shards(paths, tmp_path / "b", ShardOptions(**opts, seed=3), progress=False)
    again = set(_docs_of(_stream(tmp_path / "b-valid")))
    assert again <= set(held) and len(again) >= len(set(held)) - 1
    assert not set(_docs_of(_stream(tmp_path / "b"))) & set(held)
    # --valid-tokens: the valid split stops at exactly that many tokens; the train split is unchanged
    c = make_shards(paths, tmp_path / "c", ShardOptions(**opts, valid_tokens=500, valid_output=str(tmp_path / "cv")),
                    progress=False)
    assert json.loads((tmp_path / "cv" / "manifest.json").read_text())["corpus_tokens"] == 500
    assert c["corpus_tokens"] == m["corpus_tokens"]
    # --valid-tokens alone: documents from the lowest 1% of the hash range, up to that many tokens
    d = make_shards(paths, tmp_path / "d", ShardOptions(seq_len=T, samples_per_shard=16, valid_tokens=100),
                    progress=False)
    assert d["options"]["valid_fraction"] == 0.01 and d["valid"]["corpus_tokens"] <= 100
    one_percent = [x for x in everything if xxhash.xxh3_64_intdigest(x.encode()) < int(0.01 * 2 ** 64)]
    assert d["valid"]["corpus_tokens"] == min(100, sum(len(x.encode()) + 1 for x in one_percent))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "a-valid", "b", "b-valid", "c", "cv", "d", "d-valid"]


def _cli(inputs, out: Path, *extra) -> list[str]:
    return [sys.executable, str(ROOT / "tools" / "make_shards.py"), *map(str, inputs), "-o", str(out),
            "--seq-len", "16", "--samples-per-shard", "8", "--unit-mb", "0.004", "--valid-fraction", "0.1",
            "--max-tokens", "400000", "--seed", "5", *extra]


def test_killed_runs_finish_bit_identical(tmp_path):
    """SIGKILL (the whole process group) at three random moments (one with two tokenising processes); each
    rerun goes on from the pieces and shards that were finished, and the end result is byte for byte the
    uninterrupted run's."""
    groups = [documents(60, seed=200 + i, words=(20, 200)) for i in range(12)]
    paths = _write(tmp_path / "in", groups)
    r = subprocess.run(_cli(paths, tmp_path / "ref", "--quiet"), capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    assert re.search(r"wrote \d+ shards, \d+ samples x 16 tokens .*; valid: \d+ samples in \d+ shards .* in "
                     r"[\d.]+s \([\d,]+ tokens/s\)$", line), line
    rng, out, reused = random.Random(1), tmp_path / "out", []
    work = tmp_path / ".out.make_shards"
    total = sum(-(-p.stat().st_size // int(0.004 * 2 ** 20)) for p in paths)   # pieces of --unit-mb 0.004
    targets = sorted(rng.sample(range(1, int(total * 0.9)), 3))
    for k, target in enumerate(targets):
        # killed once `target` pieces are finished, plus up to 50 ms: inside tokenising, routing or a shard
        proc = subprocess.Popen(_cli(paths, out, "--quiet", *(["--workers", "2"] if k == 1 else [])), cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        while proc.poll() is None and len(list(work.glob("pieces/*.json"))) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it had finished
            pass
        _, err = proc.communicate()
        pieces = len(list((work / "pieces").glob("*.json"))) if work.exists() else 0
        reused.append((pieces, err))
        assert proc.returncode in (-signal.SIGKILL, 0), err
        if out.exists():  # the run had finished (its last step renames the folder into place)
            break
    if not out.exists():
        r = subprocess.run(_cli(paths, out), capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        if reused[-1][0]:  # what the last kill left finished is not tokenised again
            m = re.search(r"continuing in .*: (\d+) of (\d+) pieces already tokenised", r.stderr)
            assert m and int(m.group(1)) >= reused[-1][0], r.stderr[-2000:]
    assert any(p for p, _ in reused), reused     # a kill landed after some pieces were finished
    for name in ("", "-valid"):
        ref, got = tmp_path / f"ref{name}", tmp_path / f"out{name}"
        files = sorted(p.name for p in ref.iterdir())
        assert files == sorted(p.name for p in got.iterdir())
        for f in files:
            a, b = (ref / f).read_bytes(), (got / f).read_bytes()
            if f == "manifest.json":
                a, b = a.replace(str(ref).encode(), b"X"), b.replace(str(got).encode(), b"X")
            assert a == b, f
    assert not (tmp_path / ".out.make_shards").exists()
