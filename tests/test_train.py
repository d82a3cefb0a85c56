"""The training job over real DeepSpeed engines, webdataset shards made by make_shards.py, tensorboard
event files and multi-process gloo runs: loss falls, scalars are logged, resume is exact."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dist_utils import run_workers
from tests.train_helpers import GLA, MAMBA2, ROOT, make_shards, overrides, train_worker

SCALARS = {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/tokens_seen", "train/memory_gb"}


def events(run_dir: Path, file=None) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(file or run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"))


def _falls(losses):
    assert len(losses) >= 10
    assert sum(losses[-3:]) / 3 < losses[0] - 0.3, losses


@pytest.mark.parametrize("model,world,extra", [
    (GLA, 1, {}),
    (MAMBA2, 1, {"expansion.enabled": True, "expansion.layers": "[0]", "expansion.d_state": 16}),
    (GLA, 2, {"parallel.zero_stage": 2}),                         # DP=2, ZeRO-2
    (MAMBA2, 2, {"parallel.tp": 2}),                              # TP=2
    (GLA, 2, {"parallel.pp": 2, "expansion.enabled": True, "expansion.layers": "[0]",
              "expansion.init": "merge"}),                        # PP=2 with a merged layer
], ids=["gla-1", "mamba2-1-expanded", "gla-dp2-zero2", "mamba2-tp2", "gla-pp2-merged"])
def test_trains_and_logs(tmp_path, shards, model, world, extra):
    run_dir = tmp_path / "run"
    losses = run_workers(train_worker, world, overrides(model, shards, run_dir, steps=14, **extra),
                         tmp_path=tmp_path, timeout=420)[0]
    _falls(losses)
    ev = events(run_dir)
    assert SCALARS <= set(ev)
    assert [s for s, _ in ev["train/loss"]] == list(range(1, 15))
    assert all(abs(v - l) < 1e-5 * abs(l) for (_, v), l in zip(ev["train/loss"], losses))
    # the final checkpoint's weights are a sharded checkpoint the reshard tool reads
    man = json.loads((run_dir / "checkpoints" / "step00000014" / "model" / "manifest.json").read_text())
    assert man["format"] == "statex-sharded"


# Every layout and ZeRO stage: tests/test_engine_equality.py (each equal to one process, step by step).


def _train_cli(args, env=None, timeout=420):
    return subprocess.run([sys.executable, "-m", "statex_dist.train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))


def test_kill9_during_checkpoint_then_resume_is_exact(tmp_path, shards):
    common = dict(steps=12, **{"checkpoint.every": 4})
    a = _train_cli(overrides(GLA, shards, tmp_path / "a", **common))
    assert a.returncode == 0, a.stderr[-3000:]
    # the same run, killed by SIGKILL while writing its step-8 checkpoint (after step 4's completed)
    b = _train_cli(overrides(GLA, shards, tmp_path / "b", **common), env={"STATEX_KILL_DURING_SAVE_STEP": "8"})
    assert b.returncode == -signal.SIGKILL
    ck = tmp_path / "b" / "checkpoints"
    assert (ck / "step00000004" / "statex.json").exists() and not (ck / "step00000008").exists()
    assert (ck / ".staging" / "step00000008").exists()  # the half-written one, never resumed from
    first_files = set((tmp_path / "b").glob("events.out.tfevents.*"))
    c = _train_cli(overrides(GLA, shards, tmp_path / "b", **common))
    assert c.returncode == 0, c.stderr[-3000:]
    assert "resumed from" in c.stdout and "step00000004" in c.stdout
    (resumed_file,) = set((tmp_path / "b").glob("events.out.tfevents.*")) - first_files
    want = dict(events(tmp_path / "a")["train/loss"])
    got = dict(events(tmp_path / "b", resumed_file)["train/loss"])
    assert sorted(got) == list(range(5, 13))
    assert all(got[s] == want[s] for s in got), {s: (got[s], want[s]) for s in got}  # bitwise (float32)


def test_bad_config_fails_before_any_process_group(tmp_path, shards):
    gla = _train_cli(overrides(GLA, shards, tmp_path / "gla", steps=2), timeout=300)
    assert gla.returncode == 0, gla.stderr[-2000:]
    gla_ckpt = tmp_path / "gla" / "checkpoints" / "step00000002"
    r = _train_cli(overrides(MAMBA2, shards, tmp_path / "m", **{"checkpoint.resume": str(gla_ckpt)}), timeout=120)
    assert r.returncode == 2 and "a checkpoint of another model than this run's (arch: gla in the checkpoint" in r.stderr, r.stderr[-2000:]
    for args, msg in [
        (["optimizer.lrr=1"], "unknown config key optimizer.lrr"),
        ([f"data.train={tmp_path / 'nope'}"], "nope"),
        (["parallel.tp=3"], "TP=3"),
        (["parallel.pp=2", "parallel.zero_stage=2"], "ZeRO stage 0 or 1 only"),
    ]:
        r = _train_cli(overrides(GLA, shards, tmp_path / "x") + args, timeout=120)
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr[-2000:])


def test_freeze_unexpanded_trains_only_expanded_layers():
    from statex_dist.archs.gla.config import GLAConfig
    from statex_dist.models import build_model
    from statex_dist.training.optim import freeze_unexpanded, param_groups
    cfg = GLAConfig(vocab_size=64, hidden_size=32, num_layers=3, num_heads=[1, 4, 4], expanded_layers=[0])
    model = build_model(cfg)
    n = freeze_unexpanded(model, cfg.expanded_layers)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("layers.0.") for name in trainable)
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    groups = param_groups(model, 0.1)
    decayed = {id(p) for p in groups[0]["params"]}
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.1
    assert all(p.ndim < 2 and id(p) not in decayed for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0


def test_cosine_schedule():
    from statex_dist.training.optim import cosine_with_warmup
    assert cosine_with_warmup(0, 10, 100, 0.0) == 0.1 and cosine_with_warmup(9, 10, 100, 0.0) == 1.0
    assert cosine_with_warmup(10, 10, 100, 0.0) == 1.0
    assert abs(cosine_with_warmup(55, 10, 100, 0.0) - 0.5) < 1e-12
    assert cosine_with_warmup(100, 10, 100, 0.1) == pytest.approx(0.1)
