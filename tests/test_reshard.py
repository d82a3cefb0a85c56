"""tools/reshard_expand.py: HF -> sharded (any TP x PP) -> HF is bit-identical; TP changes compose;
sharded checkpoints load with the same logits; bad input leaves DST untouched."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from statex_dist import load_model
from statex_dist.checkpoint.tensor_files import TensorReader
from statex_dist.reshard import run
from tests.conftest import rel_err
from tests.fla_reference import make_fla_gdn, make_fla_gla
from tests.test_model_mamba2 import make_hf_mamba2, write_mamba_ssm

ROOT = Path(__file__).resolve().parents[1]


def tensors_of(folder):
    r = TensorReader(folder)
    return {k: r.get(k) for k in r.keys()}


def assert_bit_identical(a, b):
    ta, tb = tensors_of(a), tensors_of(b)
    assert set(ta) == set(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape, k
        assert torch.equal(ta[k].view(torch.uint8) if ta[k].dtype == torch.bfloat16 else ta[k],
                           tb[k].view(torch.uint8) if tb[k].dtype == torch.bfloat16 else tb[k]), k


def make_source(kind, folder):
    if kind.startswith("gla"):
        make_fla_gla(folder, vocab_size=101, tie_word_embeddings=kind.endswith("tied"),
                     use_short_conv=True, fuse_norm=kind != "gla-unfused")
    elif kind.startswith("gdn"):  # 2 key heads, 4 value heads: by values at TP=4
        make_fla_gdn(folder, vocab_size=101, num_heads=2, num_v_heads=4, tie_word_embeddings=kind.endswith("tied"))
    elif kind.startswith("tf-mamba2"):
        make_hf_mamba2(folder, n_groups=2, tie_word_embeddings=kind.endswith("tied"))
    else:  # mamba_ssm: embedding padded 101 -> 112 rows
        write_mamba_ssm(make_hf_mamba2(folder.parent / "hf-src", vocab=112), folder, vocab=101)
    return folder


@pytest.mark.parametrize("kind", ["gla", "gla-tied", "gla-unfused", "tf-mamba2", "tf-mamba2-tied", "mamba_ssm",
                                  "gdn", "gdn-tied"])
def test_hf_sharded_hf_roundtrip_is_bit_identical(tmp_path, kind):
    src = make_source(kind, tmp_path / "src")
    run(["--src", str(src), "--dst", str(tmp_path / "tp2pp2"), "--tp", "2", "--pp", "2"])
    man = json.loads((tmp_path / "tp2pp2" / "manifest.json").read_text())
    assert man["tp"] == 2 and man["pp"] == 2
    assert len([f for f in man["files"] if f.startswith("weights/")]) == 4
    run(["--src", str(tmp_path / "tp2pp2"), "--dst", str(tmp_path / "back"), "--format", "hf"])
    assert_bit_identical(src, tmp_path / "back")
    cfg_src = json.loads((src / "config.json").read_text())
    cfg_back = json.loads((tmp_path / "back" / "config.json").read_text())
    for k in ("vocab_size", "hidden_size", "num_heads", "state_size", "n_groups", "d_model", "ssm_cfg",
              "pad_vocab_size_multiple", "tie_word_embeddings", "tie_embeddings", "num_v_heads", "head_dim",
              "expand_v"):
        assert cfg_src.get(k) == cfg_back.get(k), k


def test_tokenizer_files_travel(tmp_path):
    src = make_source("gla", tmp_path / "src")
    (src / "tokenizer.json").write_text('{"fake": true}')
    run(["--src", str(src), "--dst", str(tmp_path / "s"), "--tp", "2"])
    run(["--src", str(tmp_path / "s"), "--dst", str(tmp_path / "h"), "--format", "hf"])
    assert (tmp_path / "h" / "tokenizer.json").read_text() == '{"fake": true}'


@pytest.mark.parametrize("kind", ["gla", "mamba_ssm", "gdn"])
def test_tp2_tp4_tp1_chain(tmp_path, kind):
    src = make_source(kind, tmp_path / "src")
    run(["--src", str(src), "--dst", str(tmp_path / "a"), "--tp", "2"])
    run(["--src", str(tmp_path / "a"), "--dst", str(tmp_path / "b"), "--tp", "4"])
    run(["--src", str(tmp_path / "b"), "--dst", str(tmp_path / "c"), "--tp", "1"])
    run(["--src", str(tmp_path / "c"), "--dst", str(tmp_path / "d"), "--format", "hf"])
    assert_bit_identical(src, tmp_path / "d")


def test_sharded_checkpoint_loads_with_source_logits(tmp_path):
    src = make_source("gla", tmp_path / "src")
    run(["--src", str(src), "--dst", str(tmp_path / "s"), "--tp", "2", "--pp", "2"])
    ids = torch.randint(0, 101, (2, 33))
    with torch.no_grad():
        a, b = load_model(src)(ids), load_model(tmp_path / "s")(ids)
    assert rel_err(b, a) <= 1e-5


@pytest.mark.parametrize("algo", ["xxh3_128", "sha256"])
def test_manifest_digest_catches_a_flipped_byte(tmp_path, algo):
    """Every file's digest is the one of its bytes on disk (written while streaming, checked by a second
    implementation here); one flipped bit in a weight file is named on load. ``sha256``: a manifest written
    before the digest became XXH3-128 still verifies, and still catches the flip."""
    import hashlib

    import xxhash

    from statex_dist.checkpoint.errors import CheckpointError
    from statex_dist.checkpoint.sharded import ShardedCheckpoint
    src = make_source("tf-mamba2", tmp_path / "src")
    dst = tmp_path / "s"
    run(["--src", str(src), "--dst", str(dst), "--tp", "2"])
    mpath = dst / "manifest.json"
    body = json.loads(mpath.read_text())
    hasher = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}[algo]
    for rel, info in body["files"].items():
        assert info["xxh3_128"] == xxhash.xxh3_128((dst / rel).read_bytes()).hexdigest(), rel
        info.pop("xxh3_128")
        info[algo] = hasher((dst / rel).read_bytes()).hexdigest()
    mpath.write_text(json.dumps(body))
    ShardedCheckpoint(dst, verify=True)                           # intact: passes
    victim = dst / "weights" / "tp01-pp00.safetensors"
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0x10                                               # one bit of the last tensor; same size
    victim.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f"{victim}: {algo} differs from manifest.json"):
        ShardedCheckpoint(dst, verify=True)


def test_dtype_and_determinism(tmp_path):
    src = make_source("tf-mamba2", tmp_path / "src")
    for d in ("x", "y"):
        run(["--src", str(src), "--dst", str(tmp_path / d), "--dtype", "bf16", "--expand-every", "1",
             "--d-state", "32", "--seed", "3"])
    mx = json.loads((tmp_path / "x" / "manifest.json").read_text())["files"]
    my = json.loads((tmp_path / "y" / "manifest.json").read_text())["files"]
    assert mx == my  # same flags, same bytes
    t = load_file(tmp_path / "x" / "weights" / "tp00-pp00.safetensors")
    assert all(v.dtype == torch.bfloat16 for v in t.values())


def test_cli_prints_summary(tmp_path):
    src = make_source("gla", tmp_path / "src")
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "reshard_expand.py"), "--src", str(src), "--dst",
                          str(tmp_path / "o"), "--expand-every", "2", "--init", "merge"],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == 0, out.stderr
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("reshard_expand: expanded layers [0]") and "recurrent state" in last
    # per layer 4 heads of 8 x 16 = 512 floats; layer 0 merged: one 32 x 64 state = 2048
    assert "recurrent state 1,024 -> 2,560 floats" in last


# --- bad input: a clear error naming file, tensor and constraint; DST untouched -------------------------

def _dst_untouched(dst: Path, before: dict):
    after = {p.name: p.read_bytes() for p in dst.iterdir()} if dst.exists() else None
    assert after == before
    assert not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}.tmp")]


@pytest.fixture
def existing_dst(tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("old content")
    return dst, {"keep.txt": b"old content"}


def _fails(args, match, existing):
    dst, before = existing
    with pytest.raises(Exception, match=match):
        run(args + ["--dst", str(dst), "--overwrite"])
    _dst_untouched(dst, before)


def test_refuses_existing_dst_without_overwrite(tmp_path, existing_dst):
    src = make_source("gla", tmp_path / "src")
    with pytest.raises(Exception, match="already exists; pass --overwrite"):
        run(["--src", str(src), "--dst", str(existing_dst[0])])
    _dst_untouched(*existing_dst)


def test_truncated_file(tmp_path, existing_dst):
    src = make_source("gla", tmp_path / "src")
    f = src / "model.safetensors"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    _fails(["--src", str(src)], r"model\.safetensors: (truncated|unreadable)", existing_dst)


def test_missing_tensor(tmp_path, existing_dst):
    src = make_source("gla", tmp_path / "src")
    sd = load_file(src / "model.safetensors")
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, src / "model.safetensors")
    _fails(["--src", str(src)], r"tensor 'model\.layers\.1\.mlp\.up_proj\.weight' is missing", existing_dst)


def test_wrong_shape_fails_midway_and_leaves_dst(tmp_path, existing_dst):
    src = make_source("gla", tmp_path / "src")
    sd = load_file(src / "model.safetensors")
    sd["model.layers.1.mlp.down_proj.weight"] = torch.zeros(64, 7)
    save_file(sd, src / "model.safetensors")
    _fails(["--src", str(src), "--tp", "2"],
           r"model\.safetensors: tensor 'model\.layers\.1\.mlp\.down_proj\.weight' has shape \[64, 7\] but the "
           r"config .* implies \[64, 256\]", existing_dst)


def test_d_state_not_larger(tmp_path, existing_dst):
    src = make_source("tf-mamba2", tmp_path / "src")
    _fails(["--src", str(src), "--d-state", "16", "--expand-every", "1"], r"d_state", existing_dst)


def test_heads_not_dividing(tmp_path, existing_dst):
    src = make_source("gla", tmp_path / "src")
    _fails(["--src", str(src), "--gla-heads", "3", "--expand-every", "1"], r"heads", existing_dst)


def test_tp_not_dividing(tmp_path, existing_dst):
    src = make_source("tf-mamba2", tmp_path / "src")  # 8 heads
    _fails(["--src", str(src), "--tp", "3"], r"TP=3: Mamba2 has 8 heads .* TP must divide the heads: \[1, 2, 4, 8\]",
           existing_dst)


def test_writer_reads_unchanged_mapped_tensors_from_the_file(tmp_path):
    """The writer reads an unchanged mapped tensor (whole, a dim-0 slice, a dim-1 slice) from its file with
    pread rather than through the mapping; a tensor written into after mapping is taken from memory, not
    from the now stale file. Every case equals the tensor's values bit for bit."""
    from statex_dist.checkpoint import stream_writer
    from statex_dist.checkpoint.stream_writer import StreamingSafetensorsWriter
    from statex_dist.checkpoint.tensor_files import SafetensorsFile, file_location
    g = torch.Generator().manual_seed(0)
    save_file({"a": torch.randn(37, 53, generator=g).to(torch.bfloat16), "b": torch.randn(300, generator=g)},
              tmp_path / "src.safetensors")
    f = SafetensorsFile(tmp_path / "src.safetensors")
    a, b = f.get("a"), f.get("b")
    changed = f.get("b")
    changed[7] = 1.5                                   # copy-on-write: the file keeps its old value
    pieces = {"whole": a, "rows": a[5:20], "cols": a[:, 11:40], "b": b, "changed": changed}
    assert all(file_location(p) is not None for k, p in pieces.items() if k != "changed")
    assert file_location(changed) is None
    old = stream_writer.BLOCK_BYTES
    stream_writer.BLOCK_BYTES = 256                    # several blocks per tensor, a block of rows at a time
    try:
        w = StreamingSafetensorsWriter(tmp_path / "out.safetensors",
                                       [(k, p.dtype, tuple(p.shape)) for k, p in pieces.items()])
        for k, p in pieces.items():
            w.write(k, p)
        w.close()
    finally:
        stream_writer.BLOCK_BYTES = old
    out = load_file(tmp_path / "out.safetensors")
    for k, p in pieces.items():
        assert torch.equal(out[k].view(torch.uint8) if p.dtype == torch.bfloat16 else out[k],
                           p.contiguous().view(torch.uint8) if p.dtype == torch.bfloat16 else p), k
    assert float(out["changed"][7]) == 1.5
