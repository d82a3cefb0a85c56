"""tools/make_shards.py and the shard format: contents, tokenizers, determinism, atomic writes."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from statex_dist.data import DataError, MissingDataError, check_shards
from statex_dist.data.format import encode_tokens, token_dtype_name
from statex_dist.data.synthetic import documents, write_corpus
from statex_dist.data.tokenizer import ByteTokenizer
from statex_dist.data.writer import ShardOptions, make_shards

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


def read_tar_samples(folder: Path) -> dict[int, np.ndarray]:
    """Every sample of a shard folder by global index, read with plain tarfile (no webdataset)."""
    m = json.loads((folder / "manifest.json").read_text())
    dtype = {"uint16": "<u2", "int32": "<i4"}[m["token_dtype"]]
    out = {}
    for s in m["shards"]:
        with tarfile.open(folder / s["file"]) as tf:
            for ti in tf:
                key, field = ti.name.split(".", 1)
                assert field == m["sample_field"]
                out[int(key)] = np.frombuffer(tf.extractfile(ti).read(), dtype=dtype)
    return out


def joined(tok, docs, eos) -> np.ndarray:
    return np.concatenate([np.append(ids, eos) for ids in tok.encode_batch(docs)])


def test_bytes_shards_contents(tmp_path):
    corpus = write_corpus(tmp_path / "in", n_files=3, docs_per_file=10, seed=1)
    out = tmp_path / "shards"
    m = make_shards([tmp_path / "in"], out, ShardOptions(seq_len=64, samples_per_shard=25), progress=False)
    assert m == json.loads((out / "manifest.json").read_text())
    # the EOS-joined corpus, cut at stride T into windows of T + 1
    docs = [json.loads(line)["text"] for p in corpus for line in p.read_text().splitlines()]
    stream = joined(ByteTokenizer(), docs, 256)
    T, n = 64, (len(stream) - 1) // 64
    assert m["total_samples"] == n and m["corpus_tokens"] == len(stream) and m["documents"] == 30
    assert m["total_tokens"] == n * T and m["dropped_tokens"] == len(stream) - (n * T + 1)
    assert m["seq_len"] == T and m["sample_tokens"] == T + 1 and m["token_dtype"] == "uint16"
    assert m["tokenizer"] == {"name": "bytes", "vocab_size": 258, "eos_id": 256, "bos_id": None, "pad_id": 257,
                              "fingerprint": "bytes-v1"}
    assert [s["samples"] for s in m["shards"]] == [25] * (n // 25) + ([n % 25] if n % 25 else [])
    assert [s["file"] for s in m["shards"]] == [f"shard-{i:06d}.tar" for i in range(len(m["shards"]))]
    assert [i["path"] for i in m["inputs"]] == [str(p) for p in corpus]
    assert all(len(i["sha256"]) == 64 for i in m["inputs"] + m["shards"])
    samples = read_tar_samples(out)
    assert sorted(samples) == list(range(n))
    for i, window in samples.items():
        np.testing.assert_array_equal(window, stream[i * T: i * T + T + 1])
    check_shards(out, verify_hashes=True)
    with tarfile.open(out / "shard-000000.tar") as tf:
        ti = tf.getmembers()[0]
        assert (ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname, ti.mode) == (0, 0, 0, "", "", 0o444)


def test_txt_inputs(tmp_path):
    blank = write_corpus(tmp_path / "blank", n_files=1, docs_per_file=5, kind="txt-blank")
    whole = write_corpus(tmp_path / "whole", n_files=2, docs_per_file=3, kind="txt")
    m1 = make_shards(blank, tmp_path / "o1", ShardOptions(seq_len=16, txt_docs="blank-line"), progress=False)
    m2 = make_shards(blank, tmp_path / "o2", ShardOptions(seq_len=16), progress=False)
    m3 = make_shards(whole, tmp_path / "o3", ShardOptions(seq_len=16), progress=False)
    assert (m1["documents"], m2["documents"], m3["documents"]) == (5, 1, 2)
    docs = documents(5, seed=0)
    stream = read_tar_samples(tmp_path / "o1")
    np.testing.assert_array_equal(stream[0], joined(ByteTokenizer(), docs, 256)[:17])


def _tiny_hf_tokenizer(folder: Path) -> None:
    """A byte-level BPE (the GPT-NeoX kind) trained on synthetic text, saved as a tokenizer folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(documents(40, seed=5), trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|bos|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|bos|>")
    fast.save_pretrained(folder)


def test_hf_tokenizer_folder(tmp_path):
    from transformers import AutoTokenizer
    _tiny_hf_tokenizer(tmp_path / "tok")
    corpus = write_corpus(tmp_path / "in", n_files=2, docs_per_file=8, seed=2)
    opts = ShardOptions(seq_len=32, samples_per_shard=20, tokenizer=str(tmp_path / "tok"), workers=2, add_bos=True)
    m = make_shards(corpus, tmp_path / "out", opts, progress=False)
    ref = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    assert m["tokenizer"]["vocab_size"] == len(ref) == 400
    assert (m["tokenizer"]["eos_id"], m["tokenizer"]["bos_id"]) == (ref.eos_token_id, ref.bos_token_id)
    assert m["token_dtype"] == "uint16" and len(m["tokenizer"]["fingerprint"]) == 64
    docs = [json.loads(line)["text"] for p in corpus for line in p.read_text().splitlines()]
    stream = np.concatenate([[ref.bos_token_id] + ref(d, add_special_tokens=False)["input_ids"] + [ref.eos_token_id]
                             for d in docs])
    samples = read_tar_samples(tmp_path / "out")
    assert len(samples) == m["total_samples"] == (len(stream) - 1) // 32
    for i in (0, len(samples) // 2, len(samples) - 1):
        np.testing.assert_array_equal(samples[i], stream[i * 32: i * 32 + 33])


def test_deterministic_bytes(tmp_path):
    """Same inputs and options -> identical files, whatever the number of tokenisation processes."""
    corpus = write_corpus(tmp_path / "in", n_files=3, docs_per_file=20, seed=4)
    a = make_shards(corpus, tmp_path / "a", ShardOptions(seq_len=48, samples_per_shard=30, workers=1), progress=False)
    make_shards(corpus, tmp_path / "b", ShardOptions(seq_len=48, samples_per_shard=30, workers=2), progress=False)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(names) == len(a["shards"]) + 1
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n


def test_atomic_refusal_and_overwrite(tmp_path):
    corpus = write_corpus(tmp_path / "in", n_files=1, docs_per_file=10)
    out = tmp_path / "out"
    make_shards(corpus, out, ShardOptions(seq_len=32, samples_per_shard=10), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match=f"{out} already exists; pass --overwrite"):
        make_shards(corpus, out, ShardOptions(seq_len=16), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    m = make_shards(corpus, out, ShardOptions(seq_len=16, samples_per_shard=10), overwrite=True, progress=False)
    assert json.loads((out / "manifest.json").read_text())["seq_len"] == 16 == m["seq_len"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]        # no temporary folder left


def test_failure_leaves_no_output(tmp_path, monkeypatch):
    """A bad file stops the run before any output folder exists; the pieces tokenised before it stay in the
    work folder, and the run after the fix reuses them."""
    good = write_corpus(tmp_path / "in", n_files=1, docs_per_file=30)[0]
    bad = tmp_path / "in" / "bad.jsonl"
    bad.write_text(good.read_text() + '{"txt": "no text field"}\n')
    with pytest.raises(DataError, match=rf"{bad}:31: not a JSON object with a 'text' field.*1 pieces tokenised so "
                                        rf"far are kept in {tmp_path}/.out.make_shards"):
        make_shards([good, bad], tmp_path / "out", ShardOptions(seq_len=8, samples_per_shard=4), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.make_shards", "in"]
    kept = sorted((tmp_path / ".out.make_shards" / "pieces").glob("*.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["docs"] == 30
    bad.write_text(good.read_text())
    from statex_dist.data import writer
    calls, real = [], writer._tokenise_piece
    monkeypatch.setattr(writer, "_tokenise_piece", lambda *a: calls.append(a[0].path) or real(*a))
    make_shards([good, bad], tmp_path / "out", ShardOptions(seq_len=8, samples_per_shard=4), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"] and calls == [str(bad)]
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "tiny"}\n')
    with pytest.raises(DataError, match=r"5 tokens in 1 documents, fewer than seq_len \+ 1 = 9"):
        make_shards([short], tmp_path / "o2", ShardOptions(seq_len=8), progress=False)
    with pytest.raises(MissingDataError, match="input .*nope.jsonl does not exist"):
        make_shards([tmp_path / "nope.jsonl"], tmp_path / "o2", ShardOptions(), progress=False)
    with pytest.raises(MissingDataError, match="tokenizer folder .*no-tok does not exist"):
        make_shards([good], tmp_path / "o2", ShardOptions(tokenizer=str(tmp_path / "no-tok")), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out", "short.jsonl"]


def test_cli_summary_and_refusal(tmp_path):
    write_corpus(tmp_path / "in", n_files=2, docs_per_file=10)
    cmd = [sys.executable, str(ROOT / "tools" / "make_shards.py"), str(tmp_path / "in"), "-o", str(tmp_path / "out"),
           "--seq-len", "64", "--samples-per-shard", "16", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    line = r.stdout.strip()
    assert "\n" not in line and line.startswith(f"wrote {len(m['shards'])} shards, {m['total_samples']} samples x 64")
    assert "[bytes: vocab 258, eos 256, uint16]" in line
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "already exists; pass --overwrite" in r.stderr


def test_token_dtype_by_vocab():
    assert token_dtype_name(258) == token_dtype_name(65536) == "uint16"
    assert token_dtype_name(65537) == token_dtype_name(128256) == "int32"
    w = np.array([0, 65535, 1], dtype=np.int64)
    assert np.frombuffer(encode_tokens(w, "uint16"), "<u2").tolist() == [0, 65535, 1]
    w = np.array([0, 128255, 7], dtype=np.int64)
    assert len(encode_tokens(w, "int32")) == 12
    assert np.frombuffer(encode_tokens(w, "int32"), "<i4").tolist() == [0, 128255, 7]
