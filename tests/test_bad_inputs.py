"""The bad-input matrix: every entry point refuses each bad input with one line on stderr naming what is
wrong, exit status 2, no traceback (unless STATEX_DEBUG=1) and no partial output.

One row per (entry point, input): ``Row(entry, make, message, out)``. ``make(ctx)`` builds the bad input
under ``ctx.tmp`` and returns the command line (or, for ``load_model``, the path); ``out`` names a
destination that must not exist afterwards. Most rows call the entry point's ``main(argv)`` in this
process (the same code path as the command line, without a second of imports each); the rows marked
``cli`` run the real command line as a user types it.
"""
from __future__ import annotations

import functools
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
PRETRAINED = ROOT / "statex_dist" / "pretrained"
TINY_GLA = json.dumps({"arch": "gla", "vocab_size": 260, "hidden_size": 32, "num_layers": 2, "num_heads": 4})


@dataclass
class Ctx:
    tmp: Path
    shards: Path   # a good byte-tokenizer shard folder (seq_len 64), shared by the module: copy before changing it
    tasks: Path    # a good task shard folder (with loss-mask members)

    def copy(self, src: Path, name: str) -> Path:
        dst = self.tmp / name
        shutil.copytree(src, dst)
        return dst


@dataclass
class Row:
    entry: str                      # train | train.sh | reshard | make_shards | pretrain | eval | load_model
    id: str
    make: Callable[[Ctx], list]
    message: str
    out: Optional[str] = None       # under ctx.tmp: must not exist after the refusal
    cli: bool = False               # run the real command line in a subprocess


# --- bad inputs, built on demand -------------------------------------------------------------------------

def _gla(ctx: Ctx, edit_config=None, edit_tensors=None, name="gla") -> Path:
    """A copy of the shipped tiny GLA with its config.json and / or tensors edited."""
    d = ctx.copy(PRETRAINED / "tiny-gla", name)
    if edit_config:
        cfg = json.loads((d / "config.json").read_text())
        edit_config(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
    if edit_tensors:
        sd = load_file(d / "model.safetensors")
        edit_tensors(sd)
        save_file(sd, d / "model.safetensors")
    return d


def _bin(ctx: Ctx, obj) -> Path:
    """The tiny GLA with its weights as a pytorch_model.bin holding ``obj``."""
    d = _gla(ctx)
    os.remove(d / "model.safetensors")
    torch.save(obj, d / "pytorch_model.bin")
    return d


class _Evil:
    def __reduce__(self):  # unpickling would run a shell command: weights_only=True must refuse it
        return (os.system, ("touch /tmp/statex-bad-inputs-pwned",))


def _manifest(ctx: Ctx, src: Path, name: str, edit) -> Path:
    d = ctx.copy(src, name)
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def _count_lies(m):
    m["shards"][0]["samples"] += 8
    m["total_samples"] += 8


def _dtype_lies(m):
    m["token_dtype"] = "int32"


def _drop_member(ctx: Ctx) -> Path:
    """Task shards whose first tar lost a middle sample's loss-mask member (sizes in the manifest updated)."""
    d = ctx.copy(ctx.tasks, "lost-member")
    m = json.loads((d / "manifest.json").read_text())
    tar = d / m["shards"][0]["file"]
    with tarfile.open(tar) as t:
        members = [(i, t.extractfile(i).read()) for i in t.getmembers()]
    lost = [i.name for i, _ in members if i.name.endswith(".mask.u8")][3]
    with tarfile.open(tar, "w") as t:
        for info, data in members:
            if info.name != lost:
                t.addfile(info, io.BytesIO(data))
    m["shards"][0]["bytes"] = tar.stat().st_size
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def _zero_byte(ctx: Ctx) -> Path:
    d = ctx.copy(ctx.shards, "zero-byte")
    (d / "shard-000000.tar").write_bytes(b"")
    return d


def _train(ctx: Ctx, *overrides, shards=None) -> list:
    """A scratch tiny GLA run on ``shards`` (default: the good ones) with ``overrides`` after the base."""
    return ["model.source=scratch", f"model.config={TINY_GLA}", "model.dtype=fp32",
            f"data.train={shards or ctx.shards}", "data.seq_len=64", "data.micro_batch=2", "data.global_batch=4",
            "data.workers=0", "schedule.total_steps=2", "schedule.warmup_steps=1",
            f"logging.dir={ctx.tmp / 'run'}", *overrides]


def _corpus(ctx: Ctx, name="corpus") -> Path:
    from statex_dist.data.synthetic import write_corpus
    write_corpus(ctx.tmp / name, n_files=1, docs_per_file=10)
    return ctx.tmp / name


def _bad_tokenizer(ctx: Ctx) -> Path:
    d = ctx.tmp / "tok"
    d.mkdir()
    (d / "tokenizer.json").write_text("{not json")
    (d / "tokenizer_config.json").write_text("{}")
    return d


def _empty_dir(ctx: Ctx, name="empty") -> Path:
    (ctx.tmp / name).mkdir()
    return ctx.tmp / name


def _yaml(ctx: Ctx, text: str) -> Path:
    p = ctx.tmp / "run.yaml"
    p.write_text(text)
    return p


def _bytes(ctx: Ctx, name: str, data: bytes) -> Path:
    (ctx.tmp / name).write_bytes(data)
    return ctx.tmp / name


def _lines(n: int, bad: bytes = b"") -> bytes:
    return b"".join(b'{"text": "document %d of a corpus"}\n' % i for i in range(n)) + bad


def _cut_gzip(ctx: Ctx) -> list:
    import gzip
    data = gzip.compress(_lines(2000))
    return [str(_bytes(ctx, "cut.jsonl.gz", data[:len(data) // 2])), "-o", str(ctx.tmp / "out"), "--quiet"]


def _bad_zst_line(ctx: Ctx) -> list:
    import zstandard
    data = zstandard.ZstdCompressor().compress(_lines(40, b'{"text": 7}\n'))
    ok = zstandard.ZstdCompressor().compress(_lines(40))
    # the bad file among good ones, tokenised by two processes: the error crosses from the pool the same
    return [str(_bytes(ctx, "a.jsonl.zst", ok)), str(_bytes(ctx, "c.jsonl.zst", data)), "-o", str(ctx.tmp / "out"),
            "--seq-len", "8", "--quiet", "--workers", "2"]


def _parquet(ctx: Ctx, column="body", name="p.parquet") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({column: ["a document", "another one"]}), ctx.tmp / name)
    return ctx.tmp / name


def _megatron(ctx: Ctx, damage: str) -> list:
    import struct
    ids = np.arange(40, dtype=np.uint16)
    idx = (b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 8, 2, 3) + np.array([20, 20], np.int32).tobytes() +
           np.array([0, 40], np.int64).tobytes() + np.array([0, 1, 2], np.int64).tobytes())
    if damage == "header":
        idx = b"NOTANIDX!" + idx[9:]
    _bytes(ctx, "m.idx", idx)
    _bytes(ctx, "m.bin", ids.tobytes()[:-6] if damage == "bin" else ids.tobytes())
    return [str(ctx.tmp / "m"), "-o", str(ctx.tmp / "out"), "--seq-len", "8"]


def _arrow_missing(ctx: Ctx) -> list:
    d = ctx.tmp / "hf"
    d.mkdir()
    (d / "dataset_info.json").write_text("{}")
    (d / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    return [str(d), "-o", str(ctx.tmp / "out")]


def _broken_config(ctx: Ctx) -> Path:
    d = _gla(ctx)
    (d / "config.json").write_text("{'model_type': 'gla'")
    return d


def _truncated(ctx: Ctx) -> Path:
    d = _gla(ctx)
    f = d / "model.safetensors"
    with open(f, "r+b") as fh:
        fh.truncate(f.stat().st_size // 2)
    return d


def _pretrain_record(ctx: Ctx) -> Path:
    """A folder with a pretrain.json but no checkpoint beside it."""
    d = _empty_dir(ctx, "prev")
    (d / "pretrain.json").write_text("{}")
    return d


def _fake_nvidia_smi(ctx: Ctx) -> Path:
    """A folder whose ``nvidia-smi`` lists one GPU and a driver, as on a GPU node whose torch is a CPU wheel."""
    bin_dir = ctx.tmp / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "nvidia-smi"
    exe.write_text("#!/bin/sh\n"
                   "if [ \"$1\" = -L ]; then echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)'; exit 0; fi\n"
                   "echo '| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4 |'\n")
    exe.chmod(0o755)
    return bin_dir


def _nproc4(ctx: Ctx) -> list:
    """Four processes through the launcher, on the good shards, batch sizes that fit DP=4."""
    return ["DEBUG=0", "NPROC=4", "configs/cpu-gla-tiny.yaml", f"data.train={ctx.shards}", "data.micro_batch=1"]


def _reshard(src, *extra, dst="dst"):
    return lambda ctx: ["--src", str(src(ctx) if callable(src) else src), "--dst", str(ctx.tmp / dst), *extra]


GLA_SRC, MAMBA_SRC = PRETRAINED / "tiny-gla", PRETRAINED / "tiny-mamba2"
EVAL = ["--tasks", "mqar", "--pairs", "4", "--mqar-n", "4", "--out"]

ROWS = [
    # --- training: launch/train.sh CONFIG [overrides] / python -m statex_dist.train ------------------------
    Row("train.sh", "lr-wrong-type", lambda c: ["configs/cpu-gla-tiny.yaml", "optimizer.lr=fast"],
        "optimizer.lr='fast' (from override optimizer.lr=fast): input should be a valid number", cli=True),
    Row("train.sh", "micro-batch-over-nproc", lambda c: ["DEBUG=0", "NPROC=2", "configs/cpu-gla-tiny.yaml",
                                                         "data.micro_batch=4"],
        "data.global_batch=4 (from configs/cpu-gla-tiny.yaml) is not a multiple of data.micro_batch x DP = 4 x 2 "
        "(from override data.micro_batch=4); expected a multiple of 8 (DP = WORLD_SIZE 2 / (TP 1 x PP 1))", cli=True),
    # the device and the kernels: a GPU that torch cannot use, or a kernel that cannot load, is never a quiet
    # CPU or PyTorch run
    Row("train.sh", "device-cuda-without-gpu", lambda c: ["configs/cpu-gla-tiny.yaml", "parallel.device=cuda"],
        f"parallel.device=cuda but torch cannot use a GPU here: torch {torch.__version__} is a CPU build, "
        f"nvidia-smi finds no GPU driver; install the torch build", cli=True),
    Row("train.sh", "gpus-listed-torch-cannot-use", lambda c: ["DEBUG=0", f"PATH={_fake_nvidia_smi(c)}:{os.environ['PATH']}",
                                                               "configs/cpu-gla-tiny.yaml"],
        "nvidia-smi lists 1 GPU(s) (GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)) but torch cannot use them: torch "
        f"{torch.__version__} is a CPU build, the driver 550.54.15 offers CUDA 12.4; install the torch build", cli=True),
    Row("train.sh", "kernel-forced-unavailable", lambda c: ["STATEX_KERNELS=kernel", "configs/cpu-mamba2-tiny.yaml"],
        "causal_conv1d", cli=True),
    # NPROC processes through the launcher: the checks that need no peers run once, before it starts them
    Row("train.sh", "nproc-model-missing", lambda c: [*_nproc4(c), f"model.source={c.tmp}/no-model"],
        f"{{tmp}}/no-model", cli=True),
    Row("train.sh", "nproc-shards-missing", lambda c: [*_nproc4(c), f"data.train={c.tmp}/no-shards"],
        f"{{tmp}}/no-shards", cli=True),
    Row("train.sh", "nproc-tp-not-dividing", lambda c: [*_nproc4(c), "parallel.tp=3"],
        "TP=3", cli=True),
    Row("train", "steps-out-of-range", lambda c: _train(c, "schedule.total_steps=0"),
        "schedule.total_steps=0 (from override schedule.total_steps=0): input should be greater than 0", out="run"),
    Row("train", "betas-out-of-range", lambda c: _train(c, "optimizer.betas=[0.9,1.5]"),
        "optimizer.betas[1]=1.5 (from override optimizer.betas=[0.9,1.5]): input should be less than 1"),
    Row("train", "warmup-exceeds-total", lambda c: _train(c, "schedule.warmup_steps=5"),
        "schedule.warmup_steps=5 (from override schedule.warmup_steps=5) exceeds schedule.total_steps=2; "
        "expected 0 .. 2"),
    Row("train", "micro-batch-not-dividing-global", lambda c: _train(c, "data.micro_batch=3"),
        "data.global_batch=4 (from override data.global_batch=4) is not a multiple of data.micro_batch=3 "
        "(from override data.micro_batch=3); expected a multiple of 3"),
    Row("train", "micro-batch-over-dp", lambda c: ["WORLD_SIZE=4", *_train(c)],
        "data.global_batch=4 (from override data.global_batch=4) is not a multiple of data.micro_batch x DP = "
        "2 x 4 (from override data.micro_batch=2); expected a multiple of 8 (DP = WORLD_SIZE 4 / (TP 1 x PP 1))"),
    Row("train", "seq-len-sequence-parallel", lambda c: _train(c, "parallel.tp=2", "parallel.sequence_parallel=true",
                                                              "data.seq_len=63"),
        "data.seq_len=63 (from override data.seq_len=63) does not split over parallel.tp=2 with "
        "parallel.sequence_parallel=true; expected a multiple of 2"),
    Row("train", "seq-len-context-parallel", lambda c: ["WORLD_SIZE=2", *_train(c, "parallel.cp=2", "data.seq_len=63")],
        "data.seq_len=63 (from override data.seq_len=63) does not split into parallel.cp=2 equal segments; "
        "expected a multiple of 2"),
    Row("train", "cp-not-dividing-world", lambda c: ["WORLD_SIZE=2", *_train(c, "parallel.cp=4")],
        "2 processes do not split into TP=1 x PP=1 x CP=4 (parallel.tp, parallel.pp, parallel.cp); expected a "
        "multiple of 4 processes (NPROC)"),
    Row("train", "unknown-key", lambda c: _train(c, "optimizer.learning_rate=1e-3"),
        "unknown config key optimizer.learning_rate"),
    Row("train", "config-file-missing", lambda c: [str(c.tmp / "nope.yaml")], "nope.yaml: no such config file"),
    Row("train", "config-file-empty", lambda c: [str(_yaml(c, ""))], "run.yaml: the config file is empty"),
    Row("train", "config-file-unreadable", lambda c: [str(_empty_dir(c, "dir.yaml"))],
        "dir.yaml: cannot read the config file"),
    Row("train", "config-value-in-file", lambda c: [str(_yaml(c, "optimizer: {lr: -1}\n"))],
        "optimizer.lr=-1 (from "),
    Row("train", "model-source-missing", lambda c: _train(c, f"model.source={c.tmp / 'no-model'}"),
        "no-model: does not exist"),
    Row("train", "model-source-empty", lambda c: _train(c, f"model.source={_empty_dir(c)}"), "empty: no config.json"),
    Row("train", "shards-missing", lambda c: _train(c, shards=c.tmp / "no-shards"),
        "shard folder " + "{tmp}/no-shards does not exist"),
    Row("train", "shards-not-given", lambda c: _train(c, "data.train=''"), "no shard folder given (data.train"),
    Row("train", "shards-count-lies", lambda c: _train(c, shards=_manifest(c, c.shards, "lies", _count_lies)),
        "shard-000000.tar does not hold the 24 samples of ['tokens.u16'] that {tmp}/lies/manifest.json lists"),
    Row("train", "shards-dtype-lies", lambda c: _train(c, shards=_manifest(c, c.shards, "lies", _dtype_lies)),
        "sample 0000000000 has no 'tokens.i32' member (has ['tokens.u16'])"),
    Row("train", "shards-tar-missing-member", lambda c: _train(c, shards=_drop_member(c)),
        "shard-000000.tar does not hold the 8 samples of ['mask.u8', 'tokens.u16'] that"),
    Row("train", "shards-zero-byte", lambda c: _train(c, shards=_zero_byte(c)), "shard-000000.tar is 0 bytes"),
    Row("train", "blend-not-pairs", lambda c: _train(c, shards=f"0.7 {c.shards} {c.shards}"),
        "/shards': expected weights and folders alternating, 'W1 PATH1 W2 PATH2 ...'"),
    Row("train", "blend-mixes-kinds", lambda c: _train(c, shards=f"0.7 {c.shards} 0.3 {c.tasks}"),
        "/tasks has loss_mask True, "),
    Row("train", "server-unreachable", lambda c: _train(c, shards="http://127.0.0.1:9/shards"),
        "http://127.0.0.1:9/shards/manifest.json: cannot be fetched ("),
    Row("train", "pipe-without-placeholder", lambda c: _train(c, shards="pipe:cat shards/manifest.json"),
        "data folder 'pipe:cat shards/manifest.json': a pipe: command needs {} where the file name goes"),
    # --- tools/reshard_expand.py --------------------------------------------------------------------------
    Row("reshard", "src-missing", _reshard(lambda c: c.tmp / "nothing"), "--src {tmp}/nothing: does not exist",
        out="dst", cli=True),
    Row("reshard", "src-empty", _reshard(_empty_dir), "empty: no config.json", out="dst"),
    Row("reshard", "src-not-a-folder", _reshard(lambda c: _gla(c) / "config.json"), "config.json: not a folder",
        out="dst"),
    Row("reshard", "expand-every-with-expand-layers", _reshard(GLA_SRC, "--expand-every", "2", "--expand-layers", "0"),
        "argument --expand-layers: not allowed with argument --expand-every", out="dst"),
    Row("reshard", "d-state-for-gla", _reshard(GLA_SRC, "--d-state", "64"),
        "--d-state applies to Mamba2 checkpoints; this is a GLA checkpoint (use --heads)", out="dst"),
    Row("reshard", "gla-heads-for-mamba2", _reshard(MAMBA_SRC, "--gla-heads", "2"),
        "--heads applies to GLA and Gated DeltaNet checkpoints; this is a Mamba2 checkpoint (use --d-state)",
        out="dst"),
    Row("reshard", "d-state-not-larger", _reshard(MAMBA_SRC, "--d-state", "8", "--expand-every", "1"),
        "layer 0 has d_state 8: the target d_state 8 must be > 8", out="dst"),
    Row("reshard", "tp-out-of-range", _reshard(GLA_SRC, "--tp", "0"),
        "argument --tp: expected an integer >= 1, got '0'", out="dst"),
    Row("reshard", "tp-wrong-type", _reshard(GLA_SRC, "--tp", "two"),
        "argument --tp: expected an integer >= 1, got 'two'", out="dst"),
    Row("reshard", "dst-inside-src", lambda c: ["--src", str(_gla(c)), "--dst", str(c.tmp / "gla" / "out")],
        "--dst {tmp}/gla/out is inside --src {tmp}/gla", out="gla/out"),
    Row("reshard", "src-inside-dst", lambda c: ["--src", str(_gla(c, name="d/gla")), "--dst", str(c.tmp / "d"),
                                                "--overwrite"],
        "--src {tmp}/d/gla is inside --dst {tmp}/d; writing DST would replace the source"),
    Row("reshard", "extra-tensor", _reshard(lambda c: _gla(c, edit_tensors=lambda sd: sd.update(
        {"model.layers.7.attn.q_proj.weight": torch.zeros(4, 4)}))),
        "tensors the config does not describe: ['model.layers.7.attn.q_proj.weight']", out="dst"),
    Row("reshard", "tensor-wrong-dtype", _reshard(lambda c: _gla(c, edit_tensors=lambda sd: sd.update(
        {"model.norm.weight": torch.ones(64, dtype=torch.int64)}))),
        "tensor 'model.norm.weight' has dtype int64; model weights are floating point", out="dst"),
    # --- tools/make_shards.py ---------------------------------------------------------------------------
    Row("make_shards", "input-missing", lambda c: [str(c.tmp / "nope.jsonl"), "-o", str(c.tmp / "out")],
        "input {tmp}/nope.jsonl does not exist", out="out", cli=True),
    Row("make_shards", "input-empty", lambda c: [str(_bytes(c, "e.jsonl", b"")), "-o", str(c.tmp / "out")],
        "input {tmp}/e.jsonl is empty", out="out"),
    Row("make_shards", "input-unreadable", lambda c: [str(_bytes(c, "bad.txt", b"\xff\xfe\x00bad")), "-o",
                                                      str(c.tmp / "out"), "--seq-len", "2", "--quiet"],
        "bad.txt: not UTF-8", out="out"),
    Row("make_shards", "input-folder-empty", lambda c: [str(_empty_dir(c)), "-o", str(c.tmp / "out")],
        "input folder {tmp}/empty holds no .txt or .jsonl files", out="out"),
    Row("make_shards", "seq-len-out-of-range", lambda c: [str(_corpus(c)), "-o", str(c.tmp / "out"), "--seq-len", "0"],
        "argument --seq-len: expected an integer >= 1, got '0'", out="out"),
    Row("make_shards", "tokenizer-does-not-load", lambda c: [str(_corpus(c)), "-o", str(c.tmp / "out"), "--tokenizer",
                                                             str(_bad_tokenizer(c))],
        "cannot load a tokenizer from {tmp}/tok", out="out"),
    Row("make_shards", "output-holds-input", lambda c: [str(_corpus(c, "data/corpus")), "-o", str(c.tmp / "data"),
                                                        "--overwrite"],
        "output folder {tmp}/data holds the input {tmp}/data/corpus/"),
    Row("make_shards", "gzip-truncated", _cut_gzip,
        "cut.jsonl.gz: corrupt gz data near compressed byte", out="out"),
    Row("make_shards", "zst-line-not-text", _bad_zst_line,
        "c.jsonl.zst:41: 'text' is int, not a string, at byte 1430", out="out"),
    Row("make_shards", "json-array-broken", lambda c: [str(_bytes(c, "a.json", b'[{"text": "one"}, {"text": "tw')),
                                                       "-o", str(c.tmp / "out"), "--seq-len", "2", "--quiet"],
        "a.json: item 1 of the JSON array is not JSON", out="out"),
    Row("make_shards", "parquet-no-column", lambda c: [str(_parquet(c)), "-o", str(c.tmp / "out")],
        "p.parquet: no column 'text' (columns: ['body']); pass --text-field", out="out"),
    Row("make_shards", "parquet-not-parquet", lambda c: [str(_bytes(c, "x.parquet", b"PAR1 not really")), "-o",
                                                         str(c.tmp / "out")],
        "x.parquet: not a readable parquet file", out="out"),
    Row("make_shards", "megatron-bad-header", lambda c: _megatron(c, "header"),
        "m.idx: not a Megatron-LM index", out="out"),
    Row("make_shards", "megatron-bin-short", lambda c: _megatron(c, "bin"),
        "m.bin: 74 bytes, {tmp}/m.idx describes 40 tokens of uint16 (80 bytes): the pair does not match", out="out"),
    Row("make_shards", "megatron-idx-missing", lambda c: [str(_bytes(c, "n.bin", b"\0" * 8)), "-o", str(c.tmp / "out")],
        "a Megatron-LM indexed dataset needs both {tmp}/n.bin and {tmp}/n.idx; {tmp}/n.idx does not exist", out="out"),
    Row("make_shards", "datasets-file-missing", _arrow_missing,
        "hf/data-00000-of-00001.arrow listed in {tmp}/hf/state.json is missing", out="out"),
    Row("make_shards", "max-tokens-below-a-sample", lambda c: [str(_corpus(c)), "-o", str(c.tmp / "out"),
                                                               "--seq-len", "64", "--max-tokens", "10"],
        "--max-tokens 10 is fewer than seq_len + 1 = 65: no sample", out="out"),
    Row("make_shards", "valid-fraction-out-of-range", lambda c: [str(_corpus(c)), "-o", str(c.tmp / "out"),
                                                                 "--valid-fraction", "1.5"],
        "argument --valid-fraction: expected a number in [0, 1), got '1.5'", out="out"),
    # --- tools/pretrain_tiny.py -------------------------------------------------------------------------
    Row("pretrain", "steps-out-of-range", lambda c: ["--steps", "0", "--out", str(c.tmp / "out")],
        "argument --steps: expected an integer >= 1, got '0'", out="out", cli=True),
    Row("pretrain", "lr-out-of-range", lambda c: ["--lr", "0", "--out", str(c.tmp / "out")],
        "argument --lr: expected a number > 0, got '0'", out="out"),
    Row("pretrain", "arch-unknown", lambda c: ["--arch", "llama", "--out", str(c.tmp / "out")],
        "argument --arch: invalid choice: 'llama'", out="out"),
    Row("pretrain", "set-unknown-key", lambda c: ["--set", "num_experts=4", "--out", str(c.tmp / "out")],
        "--set num_experts=4: unknown gla config keys ['num_experts']", out="out"),
    Row("pretrain", "set-not-json", lambda c: ["--set", "num_layers=two", "--out", str(c.tmp / "out")],
        "--set 'num_layers=two': the value is not JSON", out="out"),
    Row("pretrain", "init-from-missing", lambda c: ["--init-from", str(c.tmp / "nope"), "--out", str(c.tmp / "out")],
        "--init-from {tmp}/nope: no pretrain.json there", out="out"),
    Row("pretrain", "init-from-bad-checkpoint", lambda c: ["--init-from", str(_pretrain_record(c)), "--out",
                                                           str(c.tmp / "out")],
        "prev: no config.json", out="out"),
    # --- python -m statex_dist.eval ---------------------------------------------------------------------
    Row("eval", "ckpt-missing", lambda c: ["--ckpt", str(c.tmp / "nope"), *EVAL, str(c.tmp / "out")],
        "checkpoint folder(s) not found: {tmp}/nope", out="out", cli=True),
    Row("eval", "ckpt-unknown-model-type",
        lambda c: ["--ckpt", str(_gla(c, lambda cfg: cfg.update(model_type="llama"))), *EVAL, str(c.tmp / "out")],
        "unknown architecture (model_type='llama'", out="out"),
    Row("eval", "tp-out-of-range", lambda c: ["--ckpt", str(GLA_SRC), "--tp", "0"],
        "argument --tp: expected an integer >= 1, got '0'"),
    Row("eval", "depths-out-of-range", lambda c: ["--ckpt", str(GLA_SRC), "--depths", "0,1.5"],
        "argument --depths: expected comma-separated numbers in [0, 1], got '0,1.5'"),
    Row("eval", "pairs-wrong-type", lambda c: ["--ckpt", str(GLA_SRC), "--pairs", "4,x"],
        "argument --pairs: expected comma-separated integers >= 1, got '4,x'"),
    Row("eval", "task-unknown", lambda c: ["--ckpt", str(GLA_SRC), "--tasks", "mqar,mmlu"],
        "--tasks 'mqar,mmlu': unknown task(s) ['mmlu']"),
    Row("eval", "ppl-without-data", lambda c: ["--ckpt", str(GLA_SRC), "--tasks", "ppl"], "the ppl task needs --data"),
    Row("eval", "data-manifest-lies", lambda c: ["--ckpt", str(GLA_SRC), "--tasks", "ppl", "--data",
                                                 str(_manifest(c, c.shards, "lies", _count_lies))],
        "shard-000000.tar does not hold the 24 samples of ['tokens.u16'] that {tmp}/lies/manifest.json lists"),
    Row("eval", "tokenizer-does-not-load", lambda c: ["--ckpt", str(GLA_SRC), "--tasks", "passkey", "--tokenizer",
                                                      str(_bad_tokenizer(c))],
        "cannot load a tokenizer from {tmp}/tok"),
    Row("eval", "vocab-offset-out-of-vocab", lambda c: ["--ckpt", str(GLA_SRC), "--tasks", "mqar", "--vocab-offset",
                                                        "400", "--mqar-n", "1", "--out", str(c.tmp / "out")],
        "mqar uses ids 400..655 but the model has 514 tokens", out="out"),
    # --- statex_dist.load_model (Python) ----------------------------------------------------------------
    Row("load_model", "path-missing", lambda c: c.tmp / "nope", "nope: does not exist"),
    Row("load_model", "folder-empty", _empty_dir, "empty: no config.json"),
    Row("load_model", "config-not-json", lambda c: _broken_config(c), "config.json: not valid JSON"),
    Row("load_model", "unknown-model-type", lambda c: _gla(c, lambda cfg: cfg.update(model_type="llama")),
        "unknown architecture (model_type='llama'"),
    Row("load_model", "config-missing-key", lambda c: _gla(c, lambda cfg: cfg.pop("hidden_size")),
        "config.json: missing key 'hidden_size' for a fla-gla config"),
    Row("load_model", "tensor-wrong-shape", lambda c: _gla(c, edit_tensors=lambda sd: sd.update(
        {"model.layers.0.attn.v_proj.weight": torch.zeros(32, 64)})),
        "tensor 'model.layers.0.attn.v_proj.weight' has shape [32, 64] but the config"),
    Row("load_model", "tensor-wrong-dtype", lambda c: _gla(c, edit_tensors=lambda sd: sd.update(
        {"model.norm.weight": torch.ones(64, dtype=torch.int32)})),
        "tensor 'model.norm.weight' has dtype int32; model weights are floating point"),
    Row("load_model", "tensor-missing", lambda c: _gla(c, edit_tensors=lambda sd: sd.pop(
        "model.layers.0.mlp.up_proj.weight")),
        "tensor 'model.layers.0.mlp.up_proj.weight' is missing"),
    Row("load_model", "tensor-extra", lambda c: _gla(c, edit_tensors=lambda sd: sd.update(
        {"model.layers.7.attn.q_proj.weight": torch.zeros(4, 4)})),
        "tensors the config does not describe: ['model.layers.7.attn.q_proj.weight']"),
    Row("load_model", "bin-with-code", lambda c: _bin(c, {"x": _Evil()}),
        "pytorch_model.bin: cannot be read with torch.load(weights_only=True) (Trying to load unsupported GLOBAL "
        "posix.system whose module posix is blocked.)"),
    Row("load_model", "bin-not-a-state-dict", lambda c: _bin(c, [torch.zeros(2)]),
        "pytorch_model.bin: not a plain state dict of tensors (it holds list)"),
    Row("load_model", "bin-nested-state-dict", lambda c: _bin(c, {"model": {"w": torch.zeros(2)}}),
        "pytorch_model.bin: not a plain state dict of tensors (it holds a dict under 'model')"),
    Row("load_model", "safetensors-truncated", lambda c: _truncated(c), "model.safetensors: truncated"),
]


# --- running an entry point -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _mains():
    from statex_dist.eval import cli
    from statex_dist.reshard import main as reshard_main
    from statex_dist.train import main as train_main
    return {"train": train_main, "reshard": reshard_main, "eval": cli.main,
            "make_shards": _tool("make_shards").main, "pretrain": _tool("pretrain_tiny").main}


COMMANDS = {"train": [sys.executable, "-m", "statex_dist.train"], "train.sh": ["bash", "launch/train.sh"],
            "reshard": [sys.executable, "tools/reshard_expand.py"],
            "make_shards": [sys.executable, "tools/make_shards.py"],
            "pretrain": [sys.executable, "tools/pretrain_tiny.py"],
            "eval": [sys.executable, "-m", "statex_dist.eval"]}


def _env_args(argv: list) -> tuple[dict, list]:
    """Leading NAME=VALUE items of a row are environment variables (WORLD_SIZE=4 as a launcher sets it)."""
    env = {}
    while argv and "=" in argv[0] and argv[0].split("=")[0].isupper():
        k, v = argv.pop(0).split("=", 1)
        env[k] = v
    return env, argv


def refuse(row: Row, argv: list, capsys, monkeypatch) -> tuple[int, str]:
    env, argv = _env_args([str(a) for a in argv])
    if row.cli:
        r = subprocess.run(COMMANDS[row.entry] + argv, cwd=ROOT, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "DEBUG": "1", "STATEX_DEBUG": "0", **env})
        return r.returncode, r.stderr
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("STATEX_DEBUG", raising=False)
    capsys.readouterr()
    try:
        code = _mains()[row.entry](argv)
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def good_shards(tmp_path_factory):
    from statex_dist.data.synthetic import write_corpus
    from statex_dist.data.tasks import write_task_shards
    from statex_dist.data.writer import ShardOptions, make_shards
    root = tmp_path_factory.mktemp("shards")
    write_corpus(root / "corpus", n_files=1, docs_per_file=20)
    make_shards([root / "corpus"], root / "shards", ShardOptions(seq_len=64, samples_per_shard=16), progress=False)
    write_task_shards(root / "tasks", samples=16, seq_len=64, pairs=(4, 8), samples_per_shard=8)
    return root / "shards", root / "tasks"


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.entry}:{r.id}" for r in ROWS])
def test_bad_input(row, tmp_path, good_shards, capsys, monkeypatch):
    ctx = Ctx(tmp_path, *good_shards)
    made = row.make(ctx)
    message = row.message.replace("{tmp}", str(tmp_path))
    if row.entry == "load_model":
        from statex_dist import load_model
        with pytest.raises((ValueError, FileNotFoundError)) as e:
            load_model(made)
        text = str(e.value)
        assert message in text and "\n" not in text, text
        if row.id == "path-missing":
            assert isinstance(e.value, FileNotFoundError)
        assert not Path("/tmp/statex-bad-inputs-pwned").exists()
        return
    code, err = refuse(row, made, capsys, monkeypatch)
    lines = err.strip().splitlines()
    assert code == 2, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert message in lines[0], lines[0]
    assert lines[0].split(": error: ")[0] in ("statex_dist.train", "reshard_expand.py", "make_shards.py",
                                              "pretrain_tiny.py", "python -m statex_dist.eval", "statex_dist.eval")
    if row.out:
        out = tmp_path / row.out
        assert not out.exists(), sorted(p.name for p in out.iterdir())
        if out.parent.exists():  # nor the temporary folder it would have been renamed from
            assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.tmp")]


def test_traceback_only_with_statex_debug(tmp_path, capsys, monkeypatch):
    from statex_dist.reshard import main
    argv = ["--src", str(tmp_path / "nothing"), "--dst", str(tmp_path / "dst")]
    monkeypatch.setenv("STATEX_DEBUG", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("reshard_expand.py: error: --src")


def test_every_command_line_is_covered():
    assert {r.entry for r in ROWS if r.cli} | {"train"} == set(COMMANDS)
    assert {r.entry for r in ROWS} == set(COMMANDS) | {"load_model"}


# --- --help that teaches, and the resolved run config -----------------------------------------------------

HELP = {
    "train.sh": (["configs/cpu-gla-tiny.yaml", "--help"],
                 ["--print-config", "optimizer.lr: float, > 0 (default: 0.0003)",
                  "data.micro_batch: int, > 0 (default: 1)", "example:"]),
    "reshard": (["--help"], ["--tp INT", "(default: 1)", "--d-state INT", "--dst PATH", "example:"]),
    "make_shards": (["--help"], ["--seq-len INT", "(default: 2048)", "--tokenizer bytes|PATH", "example:"]),
    "pretrain": (["--help"], ["--steps INT", "(default: 3000)", "--lr FLOAT", "(default: 0.003)", "example:"]),
    "eval": (["--help"], ["--tp INT", "--pairs INT,INT,...", "(default: [8, 16, 32, 64])", "example:"]),
}


@pytest.mark.parametrize("entry", sorted(HELP))
def test_help_lists_types_defaults_and_an_example(entry):
    argv, wanted = HELP[entry]
    r = subprocess.run(COMMANDS[entry] + argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    text = " ".join(r.stdout.split())  # argparse wraps to the terminal's width
    for w in wanted:
        assert w in text, (w, r.stdout)


@pytest.mark.parametrize("how", ["train.sh", "train"])
def test_print_config_prints_the_resolved_values_and_starts_nothing(tmp_path, how):
    import yaml
    argv = ["configs/cpu-gla-tiny.yaml", "optimizer.lr=3e-4", f"logging.dir={tmp_path / 'run'}", "--print-config"]
    r = subprocess.run(COMMANDS[how] + argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = yaml.safe_load(r.stdout)
    assert cfg["optimizer"]["lr"] == 3e-4 and isinstance(cfg["optimizer"]["lr"], float)
    assert cfg["data"]["seq_len"] == 128 and cfg["name"] == "cpu-gla-tiny"
    assert not (tmp_path / "run").exists()
