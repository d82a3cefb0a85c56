"""bf16 training as users run it (DeepSpeed's bf16 config: bf16 parameters and activations, fp32 master
weights, fp32 gradient accumulation at ZeRO-1), on the CPU over gloo, at TP=2 and PP=2 against one process.

Tolerances, on the per-step training loss (about 5.5 at the start; 10 steps, AdamW at lr 3e-3):
- a layout against one bf16 process, 0.02: bf16 keeps 8 significant bits, so one rounding moves a value
  by up to 2^-9 of it. TP splits each matmul's sum over two ranks, each partial sum rounded to bf16 before
  the all-reduce; PP runs the same ops in other processes. The arithmetic is the same up to the order and
  place of roundings, and AdamW (which normalises the gradient) turns rounding-level gradient differences
  into weight differences of at most lr per step, so after 10 steps the loss (an fp32 mean over 256
  tokens) may differ by a fraction of one bf16 ulp of a value near 5.5 (2^-5 = 0.03): bound 0.02.
- bf16 against fp32 (same seed, data and layout), 0.05: every activation and weight is rounded, not only
  reordered, and the fp32 run's updates differ by the rounding of the bf16 weights themselves.
"""
import pytest

from tests.dist_utils import run_workers
from tests.train_helpers import GLA, MAMBA2, make_shards, overrides, train_worker

STEPS = 10
LAYOUT_TOL = 0.02
FP32_TOL = 0.05


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"))


def _losses(tmp_path, shards, model, name, world, dtype, **extra):
    ov = overrides(model, shards, tmp_path / name, steps=STEPS, **{"model.dtype": dtype}, **extra)
    return run_workers(train_worker, world, ov, tmp_path=tmp_path / f"w-{name}", timeout=400)[0]


def _max_diff(a, b):
    assert len(a) == len(b) == STEPS
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.mark.slow
@pytest.mark.parametrize("model", [GLA, MAMBA2], ids=["gla", "mamba2"])
def test_bf16_layouts_match_one_process(tmp_path, shards, model):
    one = _losses(tmp_path, shards, model, "one", 1, "bf16")
    fp32 = _losses(tmp_path, shards, model, "fp32", 1, "fp32")
    tp2 = _losses(tmp_path, shards, model, "tp2", 2, "bf16", **{"parallel.tp": 2})
    pp2 = _losses(tmp_path, shards, model, "pp2", 2, "bf16", **{"parallel.pp": 2})
    diffs = {"tp2": _max_diff(tp2, one), "pp2": _max_diff(pp2, one), "fp32": _max_diff(fp32, one)}
    print(f"bf16 losses {[round(x, 4) for x in one]}; max |diff|: {diffs}")
    assert diffs["tp2"] <= LAYOUT_TOL and diffs["pp2"] <= LAYOUT_TOL, diffs
    assert diffs["fp32"] <= FP32_TOL, diffs
    assert one[-1] < one[0] - 0.1, one  # and it trains


def _optimizer_worker(rank, world, ov):
    from statex_dist.parallel import state
    from statex_dist.run_config import load_run_config
    from statex_dist.train import Run
    run = Run(load_run_config(None, ov))
    losses = run.train()["losses"]
    opt = run.engine.optimizer
    out = dict(losses=losses, optimizer=type(opt).__name__, grad_acc=str(opt.grad_acc_dtype),
               params={str(p.dtype) for p in run.module.parameters()},
               master={str(t.dtype) for t in opt.fp32_groups_flat_partition},
               grads={str(t.dtype) for t in opt.fp32_groups_gradients_flat})
    state.destroy()
    return out


def test_bf16_config_is_deepspeeds_bf16_optimizer(tmp_path, shards):
    """bf16 weights in the model, fp32 master weights and fp32 gradient accumulation in DeepSpeed's
    BF16_Optimizer (ZeRO-1, 2 micro-batches per step), on the CPU, and the loss falls."""
    ov = overrides(GLA, shards, tmp_path / "run", steps=4, **{"model.dtype": "bf16", "eval.every": 0})
    out = run_workers(_optimizer_worker, 1, ov, tmp_path=tmp_path / "w", timeout=300)[0]
    assert out["optimizer"] == "BF16_Optimizer" and out["grad_acc"] == "torch.float32", out
    assert out["params"] == {"torch.bfloat16"} and out["master"] == out["grads"] == {"torch.float32"}, out
    assert out["losses"][-1] < out["losses"][0], out["losses"]
