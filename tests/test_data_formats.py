"""Every input format of tools/make_shards.py gives the shards that the same documents give as plain .jsonl;
an indexed dataset written by megatron-core's own builder is re-cut into the same samples."""
from __future__ import annotations

import gzip
import json
import lzma
from pathlib import Path

import numpy as np
import pytest

from statex_dist.data import DataError
from statex_dist.data.synthetic import documents
from statex_dist.data.tokenizer import ByteTokenizer
from statex_dist.data.writer import ShardOptions, make_shards

pytestmark = pytest.mark.timeout(300)
OPTS = dict(seq_len=32, samples_per_shard=16)


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return documents(40, seed=3, words=(5, 60))


@pytest.fixture(scope="module")
def reference(docs, tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("ref")
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    make_shards([root / "docs.jsonl"], root / "shards", ShardOptions(**OPTS), progress=False)
    return root / "shards", _shard_digests(root / "shards")


def _shard_digests(folder: Path) -> list[str]:
    m = json.loads((folder / "manifest.json").read_text())
    return [s["sha256"] for s in m["shards"]]


def _zst(data: bytes) -> bytes:
    import zstandard
    return zstandard.ZstdCompressor().compress(data)


def _jsonl(docs, field="text") -> bytes:
    return "".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)).encode()


def _json_array(docs) -> bytes:
    return json.dumps([{"text": d, "meta": {"n": i}} for i, d in enumerate(docs)], indent=2).encode()


def _two_frames(data: bytes) -> bytes:
    """A .zst of two frames (what parallel compressors write)."""
    half = data.index(b"\n", len(data) // 2) + 1
    return _zst(data[:half]) + _zst(data[half:])


WRITERS = {
    "docs.jsonl.gz": lambda d: gzip.compress(_jsonl(d)),
    "docs.jsonl.zst": lambda d: _two_frames(_jsonl(d)),
    "docs.jsonl.xz": lambda d: lzma.compress(_jsonl(d)),
    "docs.json": _json_array,
    "docs.json.gz": lambda d: gzip.compress(_json_array(d)),
    "lines.json.zst": lambda d: _zst(_jsonl(d)),
    "docs.txt": lambda d: "\n\n".join(d).encode() + b"\n",
    "docs.txt.xz": lambda d: lzma.compress("\n\n".join(d).encode()),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_text_formats(name, docs, reference, tmp_path):
    (tmp_path / name).write_bytes(WRITERS[name](docs))
    m = make_shards([tmp_path / name], tmp_path / "out", ShardOptions(**OPTS, txt_docs="blank-line"), progress=False)
    assert m["documents"] == len(docs)
    assert _shard_digests(tmp_path / "out") == reference[1]


def test_jsonl_in_pieces_and_workers(docs, reference, tmp_path):
    """A .jsonl cut into byte ranges that end inside lines, tokenised by two processes: the same shards."""
    (tmp_path / "docs.jsonl").write_bytes(_jsonl(docs))
    m = make_shards([tmp_path / "docs.jsonl"], tmp_path / "out", ShardOptions(**OPTS, unit_bytes=777, workers=2),
                    progress=False)
    assert m["documents"] == len(docs)
    assert _shard_digests(tmp_path / "out") == reference[1]


def test_parquet_by_row_group(docs, reference, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    table = pa.table({"id": list(range(len(docs))), "content": docs})
    pq.write_table(table, tmp_path / "docs.parquet", row_group_size=7)
    assert pq.ParquetFile(tmp_path / "docs.parquet").num_row_groups == 6
    make_shards([tmp_path / "docs.parquet"], tmp_path / "out", ShardOptions(**OPTS, text_field="content", workers=2),
                progress=False)
    assert _shard_digests(tmp_path / "out") == reference[1]
    with pytest.raises(DataError, match=r"docs.parquet: no column 'text' \(columns: \['id', 'content'\]\); pass "
                                        r"--text-field"):
        make_shards([tmp_path / "docs.parquet"], tmp_path / "o2", ShardOptions(**OPTS), progress=False)


def test_datasets_save_to_disk_folder(docs, reference, tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": docs, "n": list(range(len(docs)))})
    ds.save_to_disk(str(tmp_path / "hf"), num_shards=3)
    assert len(list((tmp_path / "hf").glob("data-*.arrow"))) == 3
    # the folder given inside a folder of inputs is one input, not its .json files
    m = make_shards([tmp_path], tmp_path.parent / f"{tmp_path.name}-out", ShardOptions(**OPTS), progress=False)
    assert m["documents"] == len(docs) and [i["path"] for i in m["inputs"]] == [str(tmp_path / "hf")]
    assert _shard_digests(tmp_path.parent / f"{tmp_path.name}-out") == reference[1]


def _megatron_pair(prefix: Path, docs_ids: list[np.ndarray], dtype=np.uint16, split_sentences=False) -> None:
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    b = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for ids in docs_ids:
        if split_sentences and len(ids) > 4:  # a document as two sequences (preprocess_data --split-sentences)
            b.add_document(torch.from_numpy(ids.astype(np.int64)), [len(ids) // 2, len(ids) - len(ids) // 2])
        else:
            b.add_item(torch.from_numpy(ids.astype(np.int64)))
            b.end_document()
    b.finalize(f"{prefix}.idx")


def test_megatron_indexed_dataset(docs, reference, tmp_path):
    """preprocess_data.py's output, with --append-eod (documents end in EOS) and without; one document split
    into sequences; the tokenizer check refuses another vocabulary and another EOS."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset
    tok = ByteTokenizer()
    ids = tok.encode_batch(docs)
    _megatron_pair(tmp_path / "eod", [np.append(x, tok.eos_id) for x in ids])
    _megatron_pair(tmp_path / "plain", ids, dtype=np.int32, split_sentences=True)
    ref = IndexedDataset(str(tmp_path / "plain"))
    assert len(ref.document_indices) == len(docs) + 1 and len(ref) > len(docs)
    for prefix, given in (("eod", "eod.idx"), ("plain", "plain")):
        out = tmp_path / f"out-{prefix}"
        m = make_shards([tmp_path / given], out, ShardOptions(**OPTS), progress=False)
        assert m["documents"] == len(docs) and _shard_digests(out) == reference[1], prefix
    # another EOS: every document ends in 10 ("\n"), which is not the tokenizer's EOS 256
    _megatron_pair(tmp_path / "nl", [np.append(x, 10) for x in ids])
    with pytest.raises(DataError, match=r"nl.bin/.idx: every document ends with token 10, not tokenizer bytes's EOS 256"):
        make_shards([tmp_path / "nl.bin"], tmp_path / "o1", ShardOptions(**OPTS), progress=False)
    # another vocabulary: ids shifted by 7 no longer decode to the text they encode
    _megatron_pair(tmp_path / "shift", [(x + 7) % 256 for x in ids])
    with pytest.raises(DataError, match=r"shift.bin/.idx: \d+ of \d+ sampled documents change under decode -> "
                                        r"encode with tokenizer bytes"):
        make_shards([tmp_path / "shift"], tmp_path / "o2", ShardOptions(**OPTS), progress=False)
    _megatron_pair(tmp_path / "wide", [np.append(x, 300) for x in ids[:3]] + ids[3:])
    with pytest.raises(DataError, match=r"wide.bin: document 0 holds token id 300, outside tokenizer bytes's "
                                        r"vocabulary of 258"):
        make_shards([tmp_path / "wide"], tmp_path / "o3", ShardOptions(**OPTS), progress=False)


def test_globs_lists_and_folders(docs, tmp_path):
    """A glob, an @list and a folder name the same inputs in the same order: the same shards."""
    for i in range(4):
        (tmp_path / "in" / f"s{i}").mkdir(parents=True)
        (tmp_path / "in" / f"s{i}" / "part.jsonl.zst").write_bytes(_zst(_jsonl(docs[i * 10:(i + 1) * 10])))
    (tmp_path / "list.txt").write_text("# the four parts\n" + "".join(
        f"{tmp_path}/in/s{i}/part.jsonl.zst\n" for i in range(4)))
    ways = {"glob": [f"{tmp_path}/in/**/*.jsonl.zst"], "list": [f"@{tmp_path}/list.txt"], "folder": [tmp_path / "in"]}
    digests = {}
    for way, inputs in ways.items():
        m = make_shards(inputs, tmp_path / way, ShardOptions(**OPTS), progress=False)
        assert len(m["inputs"]) == 4 and m["documents"] == 40
        digests[way] = _shard_digests(tmp_path / way)
    assert digests["glob"] == digests["list"] == digests["folder"]
    with pytest.raises(DataError, match=r"input .*/nothing/\*.jsonl: the pattern matches no file"):
        make_shards([f"{tmp_path}/nothing/*.jsonl"], tmp_path / "o", ShardOptions(**OPTS), progress=False)
