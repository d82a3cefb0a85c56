"""bf16 training as users run it (DeepSpeed's bf16 config: bf16 parameters and activations, fp32 master
weights, fp32 gradient accumulation at ZeRO-1), on the CPU over gloo, at TP=2 and PP=2 against one process,
and the precision the forward computes each parameter in under DeepSpeed's bf16 engine (the tables in the
docstrings of GatedLinearAttention, GLABlock, GatedDeltaNet, GDNBlock, Mamba2Mixer, Mamba2Block and
CausalLM), recorded at the dispatcher by statex_dist.training.precision: an upcast dropped from the model
shows as a bf16 entry. Gated DeltaNet (slow set) measured: TP=2 0.00033 and PP=2 0.00015 from one bf16
process, bf16 0.00095 from fp32 (max |loss difference| over the 10 steps).

Tolerances, on the per-step training loss (about 5.5 at the start; 10 steps, AdamW at lr 3e-3):
- a layout against one bf16 process, 0.02: bf16 keeps 8 significant bits, so one rounding moves a value
  by up to 2^-9 of it. TP splits each matmul's sum over two ranks, each partial sum rounded to bf16 before
  the all-reduce; PP runs the same ops in other processes. The arithmetic is the same up to the order and
  place of roundings, and AdamW (which normalises the gradient) turns rounding-level gradient differences
  into weight differences of at most lr per step, so after 10 steps the loss (an fp32 mean over 256
  tokens) may differ by a fraction of one bf16 ulp of a value near 5.5 (2^-5 = 0.03): bound 0.02.
- bf16 against fp32 (same seed, data and layout), 0.05: every activation and weight is rounded, not only
  reordered, and the fp32 run's updates differ by the rounding of the bf16 weights themselves.
The precision records are exact: a set of dtypes per parameter, compared for equality.
"""
import pytest
import torch

from tests.dist_utils import run_workers
from tests.train_helpers import GDN, GLA, MAMBA2, make_shards, overrides, train_worker

# 1-head layers beside 4-head ones: at TP=2 both GLA splits (by heads, by value channels) train in bf16
GLA_MIXED = {**GLA, "num_heads": [4, 1, 4, 1]}

# Parameters the forward computes in fp32 under bf16, by name suffix; all others in bf16
FP32_IN_FORWARD = {
    "gla": ("norm.weight",      # attn_norm, mlp_norm, attn.g_norm, the final norm
            "conv1d.weight"),   # q/k/v_conv1d
    "gdn": ("norm.weight",      # attn_norm, mlp_norm, attn.o_norm, the final norm
            "conv1d.weight", "attn.A_log", "attn.dt_bias"),
    "mamba2": ("norm.weight",   # the block's norm and the mixer's gated norm
               "norm_f.weight", "mixer.conv1d.weight", "mixer.conv1d.bias", "mixer.dt_bias", "mixer.A_log",
               "mixer.D"),
}


STEPS = 10
LAYOUT_TOL = 0.02
FP32_TOL = 0.05


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"))


def _record_forward(run) -> dict:
    """The dtypes each parameter of this rank's module is computed in during one forward of the engine (on
    a batch of its own: the run's data and RNG are left as they were)."""
    import torch

    from statex_dist.training.precision import ForwardPrecision
    d = run.run_cfg.data
    ids = torch.randint(0, run.model_config.vocab_size, (d.micro_batch, d.seq_len),
                        generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), ForwardPrecision(run.module) as rec:
        run.engine(ids, labels=ids)
    return {"seen": rec.table(), "unseen": rec.unseen()}


def _train_and_record_worker(rank, world, ov, record: bool):
    """One rank of a run: its per-step losses, and with ``record`` (a run without a pipeline) the forward
    precision of its module after training."""
    from statex_dist.parallel import state
    from statex_dist.run_config import load_run_config
    from statex_dist.train import Run
    run = Run(load_run_config(None, ov))
    out = {"losses": run.train()["losses"], "precision": _record_forward(run) if record else None}
    state.destroy()
    return out


def _check_precision(arch: str, record: dict, label: str) -> None:
    assert record["seen"] and not record["unseen"], (label, record["unseen"])
    wrong = {}
    for name, dtypes in record["seen"].items():
        want = ["float32" if name.endswith(FP32_IN_FORWARD[arch]) else "bfloat16"]
        if dtypes != want:
            wrong[name] = (dtypes, want)
    assert not wrong, (label, "parameter: (computed in, expected)", wrong)


def _losses(tmp_path, shards, model, name, world, dtype, record=False, **extra):
    ov = overrides(model, shards, tmp_path / name, steps=STEPS, **{"model.dtype": dtype}, **extra)
    if not record:
        return run_workers(train_worker, world, ov, tmp_path=tmp_path / f"w-{name}", timeout=400)[0]
    outs = run_workers(_train_and_record_worker, world, ov, True, tmp_path=tmp_path / f"w-{name}", timeout=400)
    for rank, out in enumerate(outs):
        _check_precision(model["arch"], out["precision"], f"{name} rank {rank}")
    return outs[0]["losses"]


def _max_diff(a, b):
    assert len(a) == len(b) == STEPS
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.mark.slow
@pytest.mark.parametrize("model", [GLA_MIXED, MAMBA2, GDN], ids=["gla", "mamba2", "gdn"])
def test_bf16_layouts_match_one_process(tmp_path, shards, model):
    """Losses at TP=2, PP=2 and CP=2 (the state entering the second segment passed in fp32) against one bf16
    process, and the forward precision of every parameter at
    TP=1 and on both ranks of TP=2 (GLA's value-sharded norm, Mamba2's gathered B/C and cross-rank norm)."""
    one = _losses(tmp_path, shards, model, "one", 1, "bf16", record=True)
    fp32 = _losses(tmp_path, shards, model, "fp32", 1, "fp32")
    tp2 = _losses(tmp_path, shards, model, "tp2", 2, "bf16", record=True, **{"parallel.tp": 2})
    pp2 = _losses(tmp_path, shards, model, "pp2", 2, "bf16", **{"parallel.pp": 2})
    cp2 = _losses(tmp_path, shards, model, "cp2", 2, "bf16", **{"parallel.cp": 2})
    diffs = {"tp2": _max_diff(tp2, one), "pp2": _max_diff(pp2, one), "cp2": _max_diff(cp2, one),
             "fp32": _max_diff(fp32, one)}
    print(f"bf16 losses {[round(x, 4) for x in one]}; max |diff|: {diffs}")
    assert max(diffs["tp2"], diffs["pp2"], diffs["cp2"]) <= LAYOUT_TOL, diffs
    assert diffs["fp32"] <= FP32_TOL, diffs
    assert one[-1] < one[0] - 0.1, one  # and it trains


def _optimizer_worker(rank, world, ov, ov_mamba2):
    from statex_dist.parallel import state
    from statex_dist.run_config import load_run_config
    from statex_dist.train import Run
    run = Run(load_run_config(None, ov))
    losses = run.train()["losses"]
    opt = run.engine.optimizer
    out = dict(losses=losses, optimizer=type(opt).__name__, grad_acc=str(opt.grad_acc_dtype),
               params={str(p.dtype) for p in run.module.parameters()},
               master={str(t.dtype) for t in opt.fp32_groups_flat_partition},
               grads={str(t.dtype) for t in opt.fp32_groups_gradients_flat},
               precision={"gla": _record_forward(run)})
    # the same engine set-up around Mamba2, in this process (no second start-up): its forward only
    run = Run(load_run_config(None, ov_mamba2))
    out["mamba2_params"] = {str(p.dtype) for p in run.module.parameters()}
    out["precision"]["mamba2"] = _record_forward(run)
    state.destroy()
    return out


def test_bf16_config_is_deepspeeds_bf16_optimizer(tmp_path, shards):
    """bf16 weights in the model, fp32 master weights and fp32 gradient accumulation in DeepSpeed's
    BF16_Optimizer (ZeRO-1, 2 micro-batches per step), on the CPU, and the loss falls; under that engine
    every parameter of GLA (after training) and of Mamba2 is computed in the precision its model's
    docstring states (A_log, dt_bias, D, the convolutions and the norm weights in fp32). Its checkpoint keeps
    the fp32 master beside the bf16 weights (an fp32 run's weights are their own master), and without it a
    resume is refused in one line naming the folder."""
    common = {"model.dtype": "bf16", "eval.every": 0, "checkpoint.every": 4}
    ov = overrides(GLA, shards, tmp_path / "run", steps=4, **common)
    ov_mamba2 = overrides(MAMBA2, shards, tmp_path / "run-mamba2", steps=4, **common)
    out = run_workers(_optimizer_worker, 1, ov, ov_mamba2, tmp_path=tmp_path / "w", timeout=300)[0]
    assert out["optimizer"] == "BF16_Optimizer" and out["grad_acc"] == "torch.float32", out
    assert out["params"] == out["mamba2_params"] == {"torch.bfloat16"}, out
    assert out["master"] == out["grads"] == {"torch.float32"}, out
    assert out["losses"][-1] < out["losses"][0], out["losses"]
    for arch, record in out["precision"].items():
        _check_precision(arch, record, arch)
    import shutil

    from statex_dist.checkpoint.errors import CheckpointError
    from statex_dist.checkpoint.sharded import ShardedCheckpoint
    from statex_dist.training.optimizer_state import MASTER, stored
    ck = tmp_path / "run" / "checkpoints" / "step00000004"
    model, master = ShardedCheckpoint(ck / "model"), stored(ck)[MASTER]
    assert master.folder != model.folder and {master.dtype(n) for n in master.names()} == {torch.float32}
    assert torch.bfloat16 in {model.dtype(n) for n in model.names()}
    shutil.rmtree(ck / "optimizer" / MASTER)
    with pytest.raises(CheckpointError, match=r"optimizer/fp32: missing, and .*model holds .* in torch.bfloat16"):
        stored(ck)
