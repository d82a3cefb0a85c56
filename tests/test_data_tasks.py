"""Task shards (MQAR + text with a loss mask): what the loader hands out is what the generator meant."""
import json

import pytest
import torch

from statex_dist.data import build_loader
from statex_dist.data.errors import DataError, ShardError
from statex_dist.data.tasks import write_task_shards
from statex_dist.eval.mqar import IGNORE, VALUES


def test_mqar_labels_only_at_queries(tmp_path):
    m = write_task_shards(tmp_path / "s", 40, 64, pairs=(4, 8, 16), text_fraction=0.25, seed=3, samples_per_shard=16)
    assert m["loss_mask"] and m["total_samples"] == 40 and len(m["shards"]) == 3
    loader = build_loader(tmp_path / "s", 0, 1, micro_batch=8, workers=0, shuffle_buffer=0, epochs=1)
    rows = [(x, y) for b in loader for x, y in zip(b["input_ids"], b["labels"])]
    assert len(rows) == 40
    n_text = 0
    for x, y in rows:
        counted = y != IGNORE
        if bool(counted.all()):      # a text window: every next token counts
            n_text += 1
            assert torch.equal(y[:-1], x[1:])
            continue
        n = int(counted.sum())       # MQAR: one label per query, each the value after its key
        assert n in (4, 8, 16)
        pos = counted.nonzero()[:, 0]
        assert torch.equal(pos, torch.arange(2 * n, 4 * n, 2))
        assert all(int(v) in VALUES for v in y[pos])
        assert torch.equal(y[pos[:-1]], x[pos[:-1] + 1])
        pairs = dict(zip(x[:2 * n:2].tolist(), x[1:2 * n:2].tolist()))
        assert all(pairs[int(x[p])] == int(y[p]) for p in pos)  # the answer is the value stated with the key
    assert n_text == m["task"]["text_samples"] > 0


def test_same_seed_same_bytes_and_bad_input(tmp_path):
    a = write_task_shards(tmp_path / "a", 20, 32, pairs=(4, 8), seed=1)
    b = write_task_shards(tmp_path / "b", 20, 32, pairs=(4, 8), seed=1)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]
    with pytest.raises(DataError, match="already exists"):
        write_task_shards(tmp_path / "a", 20, 32, pairs=(4, 8), seed=1)
    with pytest.raises(DataError, match="needs 64 tokens"):
        write_task_shards(tmp_path / "c", 20, 32, pairs=(16,))


def test_manifest_promising_masks_the_shards_lack(tmp_path):
    from statex_dist.data.synthetic import write_corpus
    from statex_dist.data.writer import ShardOptions, make_shards
    corpus = write_corpus(tmp_path / "corpus", n_files=1, docs_per_file=10)
    make_shards(corpus, tmp_path / "text", ShardOptions(seq_len=32, samples_per_shard=8), progress=False)
    mpath = tmp_path / "text" / "manifest.json"
    raw = json.loads(mpath.read_text())
    raw["loss_mask"] = True
    mpath.write_text(json.dumps(raw))
    loader = build_loader(tmp_path / "text", 0, 1, micro_batch=2, workers=0, shuffle_buffer=0, epochs=1)
    with pytest.raises(ShardError, match="mask.u8"):
        next(iter(loader))
