"""The embedded tiny models' training stream, and the shipped checkpoints themselves."""
import json

import pytest
import torch

from statex_dist import tiny
from statex_dist.eval.mqar import IGNORE


def test_stream_follows_the_mix():
    mix = tiny.TaskMix(tokens=1024, curriculum=6, text_every=3)
    kinds = []
    for step, (kind, x, y) in zip(range(1, 13), tiny.batches(mix, seed=5)):
        kinds.append(kind)
        assert x.shape == y.shape and x.numel() <= 1024
        if kind == "text":
            assert int(x.max()) < tiny.BYTE_VOCAB and torch.equal(y[:, :-1], x[:, 1:])
            continue
        n = x.shape[1] // 4
        assert n in (mix.warmup_pairs if step <= 6 else mix.pairs)
        assert x.shape[0] == 1024 // (4 * n)               # the same tokens per step for every N
        assert int(x.min()) >= tiny.MQAR_OFFSET and int(x.max()) < tiny.VOCAB  # a block of its own
        assert int((y != IGNORE).sum(1).max()) == n
    assert kinds == ["mqar", "mqar", "text"] * 4
    again = [b[1] for _, b in zip(range(4), tiny.batches(mix, seed=5))]
    assert all(torch.equal(a, b[1]) for a, b in zip(again, [b for _, b in zip(range(4), tiny.batches(mix, 5))]))


@pytest.mark.parametrize("arch", ["gla", "mamba2", "gdn"])
def test_shipped_model_recalls(arch):
    """The shipped model loads with load_model and scores on MQAR what its pretrain.json records, at the
    offset the record names (the one evaluations read)."""
    from statex_dist.api import load_model
    from statex_dist.eval.mqar import evaluate_mqar, trained_vocab_offset
    path = tiny.pretrained_path(arch)
    record = json.loads((path / "pretrain.json").read_text())
    assert trained_vocab_offset(path) == tiny.MQAR_OFFSET
    model = load_model(path)
    acc = evaluate_mqar(model, (8, 64), n=64, vocab_offset=trained_vocab_offset(path))
    # 64 of the 256 sequences the record was measured on: within a few points of it
    for N in (8, 64):
        assert abs(acc[N] - record["final"]["mqar"][str(N)]) < 0.06, (N, acc, record["final"])
    assert acc[8] > acc[64]   # the small state runs out as the pairs grow
