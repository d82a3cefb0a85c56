"""The evaluations on models whose scores are known: an induction oracle (accuracy 1), a key-value oracle
for NIAH, uniform logits (accuracy 0, perplexity = vocab); the data-parallel split gives the same numbers."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn as nn

from statex_dist.eval import (evaluate, evaluate_mqar, evaluate_niah, evaluate_passkey, evaluate_ppl, flatten,
                              mqar_batch, mqar_eval_set)
from statex_dist.eval.niah import NIAHTask
from statex_dist.eval.oracles import InductionOracle, UniformModel
from statex_dist.eval.passkey import INTRO, QUESTION, PasskeyTask
from tests.dist_utils import run_workers

GRID = dict(lengths=(288, 352), depths=(0.0, 0.5, 1.0), n=3, batch=4)


class KeyValueOracle(nn.Module):
    """Byte-level NIAH oracle: inside "what is the code of K? ", all mass on the next digit of K's value
    (read from "the code of K is V."); zeros elsewhere."""

    def forward(self, ids):
        out = torch.zeros(*ids.shape, 256)
        for b, row in enumerate(ids.tolist()):
            text = bytes(row).decode()
            facts = dict(re.findall(r"the code of (\w+) is (\d+)\.", text))
            for m in re.finditer(r"what is the code of (\w+)\? ", text):
                for i, ch in enumerate(facts[m.group(1)]):
                    if m.end() - 1 + i < ids.shape[1]:
                        out[b, m.end() - 1 + i, ord(ch)] = 100.0
        return out


def small_gla(vocab=258, seed=0):
    from statex_dist.archs.gla.config import GLAConfig
    from statex_dist.models import build_model
    torch.manual_seed(seed)
    return build_model(GLAConfig(vocab_size=vocab, hidden_size=32, num_layers=1, num_heads=2, use_short_conv=True))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from statex_dist.data.synthetic import write_corpus
    from statex_dist.data.writer import ShardOptions, make_shards
    root = tmp_path_factory.mktemp("eval_shards")
    write_corpus(root / "corpus", n_files=2, docs_per_file=20)
    make_shards([root / "corpus"], root / "shards", ShardOptions(seq_len=64, samples_per_shard=16), progress=False)
    return root / "shards"


# --- MQAR ---------------------------------------------------------------------------------------------

def test_mqar_batch_layout():
    N, B = 5, 6
    ids, labels = mqar_batch(N, B, seed=3)
    assert ids.shape == labels.shape == (B, 4 * N) and ids.dtype == labels.dtype == torch.long
    for x, y in zip(ids.tolist(), labels.tolist()):
        keys, vals = x[0:2 * N:2], x[1:2 * N:2]
        assert len(set(keys)) == N and all(1 <= k <= 127 for k in keys)
        assert len(set(vals)) == N and all(128 <= v <= 255 for v in vals)
        kv = dict(zip(keys, vals))
        qk, qv = x[2 * N::2], x[2 * N + 1::2]
        assert sorted(qk) == sorted(keys) and qv == [kv[k] for k in qk]
        assert [t for t, v in enumerate(y) if v != -100] == list(range(2 * N, 4 * N, 2))
        assert all(y[t] == x[t + 1] for t in range(2 * N, 4 * N, 2))


def test_mqar_batch_mix_offset_and_seeds():
    ids, labels = mqar_batch([2, 8], 64, seed=0, vocab_offset=40, weights=[1, 3])
    assert ids.shape == (64, 32)
    n_queries = (labels != -100).sum(1)
    assert set(n_queries.tolist()) == {2, 8} and (n_queries == 8).sum() > (n_queries == 2).sum()
    short = n_queries == 2
    assert (ids[short, 8:] == 40).all() and (labels[short, 8:] == -100).all()  # padding: token 0 + offset
    assert ids.min() >= 40 and ids.max() <= 40 + 255
    assert torch.equal(labels[labels != -100], ids[:, 1:][labels[:, :-1] != -100])
    a, b = mqar_batch(4, 8, seed=1), mqar_batch(4, 8, seed=1)
    assert torch.equal(a[0], b[0])  # an int seed: the same batch
    g = torch.Generator().manual_seed(1)
    assert not torch.equal(mqar_batch(4, 8, g)[0], mqar_batch(4, 8, g)[0])  # a generator: a stream
    ev = mqar_eval_set(4, 8)
    assert torch.equal(ev[0], mqar_eval_set(4, 8)[0]) and not torch.equal(ev[0], a[0])


def test_mqar_oracle_and_uniform():
    assert evaluate_mqar(InductionOracle(256), pairs=(4, 16, 64), n=8, batch=4) == {4: 1.0, 16: 1.0, 64: 1.0}
    assert evaluate_mqar(InductionOracle(300), pairs=(8,), n=8, vocab_offset=44) == {8: 1.0}
    uniform = evaluate_mqar(UniformModel(256), pairs=(4, 16), n=16)
    assert all(acc <= 1 / 128 for acc in uniform.values())


# --- passkey, NIAH --------------------------------------------------------------------------------------

def test_passkey_examples():
    task = PasskeyTask(digits=5, seed=0)
    where = []
    for d in (0.0, 0.5, 1.0):
        ids, a = task.example(300, d, 0)
        text = bytes(ids).decode()
        key = task.key(300, d, 0)
        assert len(ids) == 300 and a == 5 and text.endswith(QUESTION + key) and text.startswith(INTRO)
        where.append(text.index(f"The pass key is {key}."))
    assert where[0] == len(INTRO) and where[0] < where[1] < where[2]
    assert text.index(f"is the pass key. {QUESTION}") > 0  # depth 1: the needle ends right before the question


def test_passkey_oracle_uniform():
    res = evaluate_passkey(InductionOracle(256), **GRID)
    assert res["lengths"] == [288, 352] and res["depths"] == [0.0, 0.5, 1.0]
    assert res["accuracy"] == [[1.0] * 3] * 2 and res["token_accuracy"] == [[1.0] * 3] * 2
    res = evaluate_passkey(UniformModel(256), **GRID)
    assert res["accuracy"] == [[0.0] * 3] * 2 and res["token_accuracy"] == [[0.0] * 3] * 2
    assert res["nll"][0][0] == pytest.approx(math.log(256), rel=1e-6)
    with pytest.raises(ValueError, match="too short"):
        evaluate_passkey(UniformModel(256), lengths=(100,), depths=(0.5,), n=1)


def test_niah_examples_and_oracles():
    task = NIAHTask(distractors=3, seed=0)
    for d in (0.0, 0.5, 1.0):
        ids, a = task.example(256, d, 1)
        text = bytes(ids).decode()
        facts = re.findall(r"the code of (\w+) is (\d+)\.", text)
        key, value = re.search(r"what is the code of (\w+)\? (\d+)$", text).groups()
        assert len(ids) == 256 and a == 4 and len(facts) == 4
        assert [f for f in facts if f[0] == key] == [(key, value)]
    res = evaluate_niah(KeyValueOracle(), **GRID)
    assert res["accuracy"] == [[1.0] * 3] * 2
    assert evaluate_niah(UniformModel(256), **GRID)["accuracy"] == [[0.0] * 3] * 2


# --- perplexity --------------------------------------------------------------------------------------

def test_ppl_uniform_is_vocab(shards):
    res = evaluate_ppl(UniformModel(258), shards, batches=3, micro_batch=2)
    assert res["tokens"] == 3 * 2 * 64
    assert res["ppl"] == pytest.approx(258, rel=1e-6)  # exact up to fp32 log-softmax


def test_ppl_token_weighted_both_paths(shards):
    from statex_dist.data import build_loader
    model = small_gla().eval()
    nll = tokens = 0.0
    loader = build_loader(shards, 0, 1, micro_batch=3, workers=0, shuffle_buffer=0, epochs=1)
    with torch.no_grad():
        for i, b in enumerate(loader):
            if i == 4:
                break
            logits = model(b["input_ids"])
            nll += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), b["labels"].flatten(), reduction="sum"))
            tokens += b["labels"].numel()
    a = evaluate_ppl(model, shards, batches=4, micro_batch=3, use_labels=True)
    b = evaluate_ppl(model, shards, batches=4, micro_batch=3, use_labels=False)
    assert a["tokens"] == b["tokens"] == tokens
    assert a["ppl"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert b["ppl"] == pytest.approx(a["ppl"], rel=1e-5)


# --- the suite, and the data-parallel split -------------------------------------------------------------

SUITE = dict(tasks=("mqar", "passkey", "niah", "ppl"), mqar_pairs=(4, 8), mqar_n=12, batch=4,
             lengths=(288,), depths=(0.0, 1.0), grid_n=3, ppl_batches=3, micro_batch=2)


def test_suite_flatten_and_errors(shards):
    res = evaluate(InductionOracle(258), data=str(shards), **SUITE)
    flat = flatten(res)
    assert flat["eval/mqar/N4"] == flat["eval/mqar/mean"] == 1.0
    assert flat["eval/passkey/L288_d0"] == flat["eval/passkey/mean"] == 1.0
    assert {"eval/niah/mean", "eval/niah/nll", "eval/ppl", "eval/loss"} <= set(flat)
    with pytest.raises(ValueError, match="needs held-out shards"):
        evaluate(UniformModel(258), tasks=["ppl"])
    with pytest.raises(ValueError, match="unknown eval task"):
        evaluate(UniformModel(258), tasks=["mmlu"])


class HalfOracle(nn.Module):
    """Random bigram logits, plus the induction oracle's on rows where (id sum + first id) is even: a cheap deterministic
    model whose accuracies and NLLs are neither 0 nor 1."""

    def __init__(self, vocab=258, seed=0):
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        nn.init.normal_(self.table.weight, generator=torch.Generator().manual_seed(seed), std=3.0)
        self.oracle = InductionOracle(vocab)

    def forward(self, ids):
        even = ((ids.sum(1) + ids[:, 0]) % 2 == 0).float()[:, None, None]
        return self.table(ids) + even * self.oracle(ids)


def _dp_worker(rank, world, shards):
    import torch.distributed as dist
    dist.init_process_group("gloo")
    res = evaluate(HalfOracle(), data=shards, dp=(rank, world, None), **SUITE)
    dist.destroy_process_group()
    return res


def _close(a, b):
    return torch.allclose(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), rtol=1e-6)


def test_data_parallel_split_same_numbers(shards, tmp_path):
    one = evaluate(HalfOracle(), data=str(shards), dp=(0, 1, None), **SUITE)
    assert 0 < one["mqar"][8] < 1 and 0 < one["passkey"]["accuracy"][0][1] < 1
    two = run_workers(_dp_worker, 2, str(shards), tmp_path=tmp_path)
    for res in two:
        assert res["mqar"] == one["mqar"]
        for task in ("passkey", "niah"):
            assert res[task]["accuracy"] == one[task]["accuracy"]
            assert res[task]["token_accuracy"] == one[task]["token_accuracy"]
            assert _close(res[task]["nll"], one[task]["nll"])
        assert res["ppl"]["tokens"] == one["ppl"]["tokens"]
        assert _close(res["ppl"]["ppl"], one["ppl"]["ppl"])


# --- the defaults, and the MQAR offset of a run -----------------------------------------------------------

def _as_tuples(cfg) -> dict:
    import dataclasses
    return {k: tuple(v) if isinstance(v, list) else v for k, v in dataclasses.asdict(cfg).items()}


def test_run_section_and_cli_flags_default_to_eval_config():
    """Left unset, the training YAML's eval section and the flags of python -m statex_dist.eval ask for
    EvalConfig's defaults; a run differs only where it must (its tasks, its data section's shards and
    micro-batch)."""
    from statex_dist.eval import EvalConfig, cli
    from statex_dist.run_config import RunConfig
    default = _as_tuples(EvalConfig())
    run = _as_tuples(EvalConfig.from_run(RunConfig()))
    assert {k: v for k, v in run.items() if k not in ("tasks", "data", "micro_batch")} == \
        {k: v for k, v in default.items() if k not in ("tasks", "data", "micro_batch")}
    args = cli.build_parser().parse_args(["--ckpt", "x"])
    assert args.vocab_offset is None  # per checkpoint
    assert _as_tuples(cli.eval_config(args)) == default


def test_run_evaluates_mqar_at_the_offset_of_its_source():
    """eval.vocab_offset left unset is the offset model.source was trained with (the tiny models': 258);
    a run from scratch uses 0, and a value in the config wins."""
    from statex_dist import tiny
    from statex_dist.eval import EvalConfig
    from statex_dist.run_config import load_run_config
    root = tiny.PRETRAINED.parents[1]
    for arch in ("gla", "mamba2"):
        path = root / "configs" / f"tiny-{arch}-statex.yaml"
        cfg = load_run_config(path, [f"model.source={tiny.pretrained_path(arch)}"])
        assert cfg.eval.vocab_offset is None and EvalConfig.from_run(cfg).vocab_offset == tiny.MQAR_OFFSET
        set0 = load_run_config(path, [f"model.source={tiny.pretrained_path(arch)}", "eval.vocab_offset=0"])
        assert EvalConfig.from_run(set0).vocab_offset == 0
    assert EvalConfig.from_run(load_run_config(root / "configs" / "cpu-gla-tiny.yaml")).vocab_offset == 0
