"""A user's first runs, typed as users type them: ``DEBUG=1 bash launch/train.sh configs/cpu-*-tiny.yaml``
with ``key=value`` overrides, a run config of their own, and a resume after a clean stop, for every
architecture."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.train_helpers import ROOT, make_shards

ARCHS = ["gla", "mamba2", "gdn"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"), seq_len=128)


def launch(config, *overrides, timeout=300):
    return subprocess.run(["bash", "launch/train.sh", str(config), *overrides], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, DEBUG="1"))


def short(shards, run_dir, steps, every):
    """Overrides that shorten a shipped config to a few steps on the test shards, as a user would type them."""
    return [f"data.train={shards}", f"logging.dir={run_dir}", f"schedule.total_steps={steps}",
            "schedule.warmup_steps=1", f"checkpoint.every={every}", "eval.tasks=[ppl]", "logging.every=1"]


def lr_logged(stdout: str) -> float:
    line = next(ln for ln in stdout.splitlines() if "step 1/" in ln)
    return float(line.split(" lr ")[1].split()[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_lr_typed_as_people_type_it(tmp_path, shards, arch):
    # "3e-4" is a string to YAML (no dot); it must train at 3e-4, on the command line and in a file
    r = launch(f"configs/cpu-{arch}-tiny.yaml", "optimizer.lr=3e-4", *short(shards, tmp_path / "a", 1, 0))
    assert r.returncode == 0, r.stderr[-3000:]
    assert lr_logged(r.stdout) == pytest.approx(3e-4)   # warm-up of 1 step: the first step runs at lr
    # the run's first line: device, backend, dtype, layout and the implementation of each op the model uses
    first = next(ln for ln in r.stdout.splitlines() if ln.startswith("[statex-dist]"))
    ops = {"gla": "gla=torch, conv1d=torch", "mamba2": "ssd=torch, conv1d=torch",
           "gdn": "gdn=torch, conv1d=torch"}[arch]
    assert (f"device cpu | backend gloo | dtype fp32 | TP=1 PP=1 DP=1 ZeRO-1 on 1 process | "
            f"kernels: {ops} (STATEX_KERNELS=auto)") in first, first
    own = tmp_path / "mine.yaml"
    own.write_text((ROOT / "configs" / f"cpu-{arch}-tiny.yaml").read_text().replace("lr: 3.0e-3", "lr: 3e-4"))
    assert "lr: 3e-4" in own.read_text()
    r = launch(own, *short(shards, tmp_path / "b", 1, 0))
    assert r.returncode == 0, r.stderr[-3000:]
    assert lr_logged(r.stdout) == pytest.approx(3e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_resume_after_a_clean_stop(tmp_path, shards, arch):
    # 2 steps with a checkpoint, then the same command asking for 3: it resumes at step 2 (model, optimizer,
    # schedule), the same layout and config; a Mamba2 run used to refuse its own checkpoint here
    cfg = f"configs/cpu-{arch}-tiny.yaml"
    a = launch(cfg, *short(shards, tmp_path / "run", 2, 2))
    assert a.returncode == 0, a.stderr[-3000:]
    b = launch(cfg, *short(shards, tmp_path / "run", 3, 2), "checkpoint.resume=auto")
    assert b.returncode == 0, b.stderr[-3000:]
    assert ("resumed from" in b.stdout and "step00000002 at step 2: at TP=1 PP=1 DP=1 ZeRO-1 as saved: weights, "
            "fp32 master weights and AdamW moments (step 2)" in b.stdout), b.stdout
    meta = json.loads((tmp_path / "run" / "checkpoints" / "step00000003" / "statex.json").read_text())
    assert meta["step"] == 3
    assert_each_tensor_once(tmp_path / "run" / "checkpoints" / "step00000003", cfg)


def assert_each_tensor_once(ckpt: Path, cfg: str) -> None:
    """Every file of a training checkpoint, by name and bytes: the weights once (model/), the optimizer state
    once (optimizer/: the two moments; fp32 weights are their own master, so no optimizer/fp32), the metadata
    and the source's side files; no file of DeepSpeed's, which held all of it again. Its tensor bytes are
    within 5% of what fp32 weights and moments need (12 bytes a parameter: the rest is safetensors headers)."""
    from safetensors import safe_open
    from statex_dist.checkpoint.sharded import ShardedCheckpoint
    files = sorted(str(f.relative_to(ckpt)) for f in ckpt.rglob("*") if f.is_file())
    tensors = [f for f in files if f.endswith(".safetensors")]
    other = [f for f in files if f not in tensors and f != "statex.json" and not f.endswith("manifest.json")]
    assert not [f for f in other if not f.startswith("model/") or "/" in f[len("model/"):]], files
    assert not [f for f in other if f.endswith((".pt", ".bin", ".safetensors"))], other   # side files only
    names: dict = {}
    for f in tensors:
        with safe_open(ckpt / f, "pt") as st:
            for n in st.keys():
                names.setdefault((f.split("/weights/")[0], n), []).append(f)
    assert {k: v for k, v in names.items() if len(v) > 1} == {}, "a tensor stored twice in one folder"
    folders = sorted({folder for folder, _ in names})
    assert folders == ["model", "optimizer/exp_avg", "optimizer/exp_avg_sq"], folders
    model = ShardedCheckpoint(ckpt / "model")
    params = sum(model.get(n).numel() for n in model.names())
    stored = sum((ckpt / f).stat().st_size for f in tensors)
    assert 12 * params <= stored <= 1.05 * 12 * params, (stored, params, cfg)


def test_two_processes_leave_no_shared_memory_behind(tmp_path, shards):
    # DeepSpeed's CPU all-reduce maps a 64 MiB /dev/shm file per rank when the launcher's ranks share a
    # machine and never unlinks it; the run unlinks its own (parallel.deepspeed_mpu._unlink_shm_buffer)
    port = "29517"
    mine = lambda: {f for f in os.listdir("/dev/shm") if f.startswith("deepspeed_allreduce_buffer") and f"_{port}_" in f}
    for f in mine():    # left by a run of an older checkout on the same port
        os.unlink(f"/dev/shm/{f}")
    r = subprocess.run(["bash", "launch/train.sh", "configs/cpu-gla-tiny.yaml", *short(shards, tmp_path / "run", 2, 0)],
                       cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, NPROC="2", MASTER_PORT=port))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step 2/2" in r.stdout, r.stdout[-2000:]
    assert mine() == set()


def test_resume_of_another_model_names_the_fields(tmp_path, shards):
    a = launch("configs/cpu-mamba2-tiny.yaml", *short(shards, tmp_path / "run", 1, 1))
    assert a.returncode == 0, a.stderr[-3000:]
    b = launch("configs/cpu-mamba2-tiny.yaml", *short(shards, tmp_path / "run", 2, 1), "expansion.d_state=32")
    assert b.returncode == 2
    assert "d_state: [64, 16] in the checkpoint, [32, 16] in this run" in b.stderr, b.stderr[-2000:]
    assert "Traceback" not in b.stderr


@pytest.mark.parametrize("override,message", [
    ("optimizer.lr=abc", "optimizer.lr='abc' (from override optimizer.lr=abc): input should be a valid number"),
    ("optimizer.lr=0", "optimizer.lr=0 (from override optimizer.lr=0): input should be greater than 0"),
    ("optimizer.betas=[0.9,1.0]", "optimizer.betas[1]=1.0"),
    ("parallel.activation_checkpointing=maybe", "parallel.activation_checkpointing='maybe'"),
    ("model.dtype=fp16", "input should be 'auto', 'fp32' or 'bf16'"),
])
def test_bad_values_name_key_value_and_origin(tmp_path, override, message):
    r = launch("configs/cpu-gla-tiny.yaml", override, timeout=120)
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_bad_value_in_a_file_names_the_file(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("optimizer: {lr: fast}\n")
    r = launch(own, timeout=120)
    assert r.returncode == 2 and f"optimizer.lr='fast' (from {own})" in r.stderr, r.stderr[-2000:]
