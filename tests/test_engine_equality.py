"""Whole runs through statex_dist.train.Run and DeepSpeed's engine equal one process, and the one-process run
equals plain torch: 10 AdamW steps with clipping and the cosine schedule, fp32, at every layout and ZeRO
stage. The test reduces nothing itself: losses and grad norms are the engine's, the weights are read back
from the checkpoint each run writes, and every rank's live parameters are returned and checked, replicas
included.

Why the data agree: the sample order does not depend on the layout (statex_dist/data/pipeline.py), so each
step every layout trains on the same 8 samples. With 2 virtual readers, no shuffle buffer and
``aligned_shards``' shards of 4 samples, step k reads exactly shards ``order[2k]`` and ``order[2k + 1]``.
Every sample has the same number of labelled tokens, so the mean over micro-batches and DP ranks is the
mean over the 8.

Tolerance, relative (max |a - b| / max |b|): 1e-5 for losses and grad norms, 5e-5 for weights. fp32 sums
the same terms in another order (other micro-batch splits, TP partial sums, DP reductions, ZeRO's flat
buffers): ~1e-7 in losses and grad norms on every CPU measured. Weights see more, and how much depends on
the CPU's kernels: AdamW divides each gradient by its own RMS, so where a gradient is a sum of terms that
nearly cancel, its rounding moves the weight by a sizeable fraction of the learning rate. At lr 5e-4 after
10 steps, weights differ by up to ~4e-6 on one machine's CPU (Mamba2 at DP=2: 1.9e-6) and by 1.05e-5 to
1.2e-5 in Mamba2 on another's (CI's: every layout and the 4-micro-batch one-process run alike, while its
losses agree to 1.7e-7). On the first, lr 3e-3 gave ~2e-5, which is why the rate is not larger; 16 virtual
readers, which mix the rows of 8 shards in a step, gave 1.5e-5 in Mamba2's tied embedding at TP=2. A wrong
reduction (a missing DP average, a clip on the wrong norm) moves the grad norm or the loss by 1e-3 or more,
a wrong shard moves a weight by far more; replicas are compared bit for bit.

The one-process run that every layout is compared with is itself compared with plain torch (torch_adamw,
in the reference's own process, from its first weights on the batches it read): torch.optim.AdamW on each
tensor, torch.nn.utils.clip_grad_norm_, each step's learning rate set by hand from cosine_with_warmup. The
two do the same arithmetic element by element (DeepSpeed's ZeRO-1 steps the same torch AdamW on its flat
fp32 partition) except the grad norm, summed in another order, and the clip factor (torch multiplies by
clip / (norm + 1e-6), DeepSpeed divides by (norm + 1e-6) / clip). Measured: losses bitwise equal, grad norms
1.9e-7 (GLA) and 3.5e-7 (Mamba2), weights after the 10 steps 2.6e-7 and 1.2e-7. The layouts' tolerances
apply (weights at 5e-5 for the same AdamW sensitivity on other CPUs). What the layouts cannot see because
DeepSpeed at world size 1 shares it, e.g. the schedule one step ahead in every run, this catches: that gave
2.8e-3 in the loss, 1.7e-2 in the grad norm and 1.8e-1 in a weight (GLA).
"""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import rel_err
from tests.dist_utils import run_workers
from tests.train_helpers import aligned_shards

STEPS, GLOBAL = 10, 8
TOL = {"loss": 1e-5, "norm": 1e-5, "ckpt": 5e-5, "live": 5e-5}   # see the docstring
ARCHS = {
    # a 4-head layer and a merged 1-head layer (StateX merge of layer 0)
    "gla": ({"arch": "gla", "vocab_size": 260, "hidden_size": 32, "num_layers": 2, "num_heads": 4,
             "use_short_conv": True, "tie_word_embeddings": False},
            {"expansion.enabled": True, "expansion.layers": "[0]", "expansion.init": "merge"}),
    # ngroups 1, d_state 16 in layer 0 and 8 in layer 1; tied embeddings (on both pipeline ends at PP=2)
    "mamba2": ({"arch": "mamba2", "vocab_size": 260, "hidden_size": 32, "num_layers": 2, "d_state": 8,
                "headdim": 16, "ngroups": 1, "chunk_size": 16, "tie_word_embeddings": True},
               {"expansion.enabled": True, "expansion.layers": "[0]", "expansion.d_state": 16}),
    # Gated DeltaNet: 2 key heads with 4 value heads, layer 0 merged into one head (expansion.heads)
    "gdn": ({"arch": "gdn", "vocab_size": 260, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "num_v_heads": 4,
             "key_dim": 32, "value_dim": 32, "use_short_conv": True, "tie_word_embeddings": False},
            {"expansion.enabled": True, "expansion.layers": "[0]", "expansion.heads": 1, "expansion.init": "merge"}),
}


def run_overrides(arch: str, shards, run_dir, **extra) -> list[str]:
    model, expansion = ARCHS[arch]
    base = {
        "model.source": "scratch", "model.config": json.dumps(model), "model.dtype": "fp32", **expansion,
        "data.train": str(shards), "data.seq_len": 32, "data.micro_batch": 2, "data.global_batch": GLOBAL,
        "data.workers": 0, "data.shuffle_buffer": 0, "data.virtual_readers": 2,
        # clip 0.3: below the grad norm of most steps here, so clipping acts (checked on the reference)
        "optimizer.lr": 5e-4, "optimizer.grad_clip": 0.3, "optimizer.weight_decay": 0.1,
        "schedule.total_steps": STEPS, "schedule.warmup_steps": 2,
        "logging.dir": str(run_dir), "logging.every": 100, "checkpoint.every": 0, "seed": 0,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def engine_runs_worker(rank, world, runs: list, torch_reference: bool = False):
    """Several runs (override lists) in turn in the same processes, one spawn for all: engine_worker's
    result for each."""
    from statex_dist.parallel import state
    try:
        return [engine_worker(rank, world, o, torch_reference, destroy=False) for o in runs]
    finally:
        state.destroy()


def engine_worker(rank, world, overrides_list, torch_reference: bool = False, destroy: bool = True):
    """One rank of a run: its losses, the engine's grad norm after each step, and its live parameters
    (this rank's TP slice of its stage's parameters, under the model's own names; ZeRO-3 gathered).
    ``torch_reference`` (one process, no pipeline): also the same run in plain torch (torch_adamw) from the
    run's first weights on the batches it read, under "torch"."""
    from statex_dist.parallel import state
    from statex_dist.run_config import load_run_config
    from statex_dist.train import Run
    from statex_dist.training.checkpoints import _zero3_gathered
    from statex_dist.training.initial_weights import named_internal_parameters
    from statex_dist.training.optimizer_state import base_optimizer
    run = Run(load_run_config(None, overrides_list))
    if torch_reference:
        first = {name: p.detach().clone() for name, p in named_internal_parameters(run.module)}
        batches, take_micro = [], run._micro

        def recorded_micro():
            ids, labels = take_micro()
            batches.append((ids.clone(), labels.clone()))
            return ids, labels

        run._micro = recorded_micro
    norms, take_step = [], run.train_step

    def step_and_norm():
        loss = take_step()
        norms.append(float(run.engine.get_global_grad_norm()))
        return loss

    run.train_step = step_and_norm
    out = run.train()
    params = {}
    for name, p in named_internal_parameters(run.module):
        with _zero3_gathered(p):
            params[name] = p.detach().clone()
    weights = {p.untyped_storage().data_ptr() for p in run.module.parameters()}
    masters = [p.untyped_storage().data_ptr() for g in base_optimizer(run.engine).param_groups for p in g["params"]]
    where = {"rank": rank, "tp_rank": run.tp_rank, "dp_rank": run.dp_rank, "stage": run.stage,
             "tp": run.run_cfg.parallel.tp, "master_is_weights": all(m in weights for m in masters)}
    extra = {"torch": torch_adamw(run.run_cfg, run.model_config, first, batches)} if torch_reference else {}
    if destroy:
        state.destroy()
    return {**where, "losses": out["losses"], "norms": norms, "params": params, **extra}


def torch_adamw(cfg, model_config, first: dict, batches: list) -> dict:
    """The run in plain torch, no DeepSpeed: the model at TP=1 from the weights ``first``, one step per
    batch in ``batches`` (the whole global batch), torch.optim.AdamW with the run's betas, eps and weight
    decay on matrices only, the learning rate of step k set to lr * cosine_with_warmup(k) before its
    update, torch.nn.utils.clip_grad_norm_ at optimizer.grad_clip. Its losses, pre-clip grad norms and
    weights after the last step."""
    from statex_dist.models import build_model
    from statex_dist.models.names import named_internal_parameters
    from statex_dist.training.optim import cosine_with_warmup
    o, s = cfg.optimizer, cfg.schedule
    model = build_model(model_config, dtype=torch.float32, init=False)
    named = dict(named_internal_parameters(model))
    with torch.no_grad():
        for name, p in named.items():
            p.copy_(first[name])
    opt = torch.optim.AdamW([{"params": [p for p in named.values() if p.ndim >= 2], "weight_decay": o.weight_decay},
                             {"params": [p for p in named.values() if p.ndim < 2], "weight_decay": 0.0}],
                            lr=o.lr, betas=tuple(o.betas), eps=o.eps)
    losses, norms = [], []
    for k, (ids, labels) in enumerate(batches):
        for g in opt.param_groups:
            g["lr"] = o.lr * cosine_with_warmup(k, s.warmup_steps, s.total_steps, s.min_lr / o.lr)
        opt.zero_grad()
        loss = model(ids, labels=labels)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)))
        opt.step()
        losses.append(loss.item())
    return {"losses": losses, "norms": norms, "params": {n: p.detach().clone() for n, p in named.items()}}


def final_weights(run_dir):
    from statex_dist.checkpoint.sharded import ShardedCheckpoint
    return ShardedCheckpoint(run_dir / "checkpoints" / f"step{STEPS:08d}" / "model")


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    return aligned_shards(tmp_path_factory.mktemp("engine-data"))


@pytest.fixture(scope="session")
def reference(tmp_path_factory, shards):
    """The one-process run of each arch (1 micro-batch of 8), all made in one process on first use."""
    made = {}

    def get(arch):
        if not made:
            root = tmp_path_factory.mktemp("ref")
            runs = [run_overrides(a, shards, root / a, **{"data.micro_batch": 8}) for a in ARCHS]
            (results,) = run_workers(engine_runs_worker, 1, runs, True, tmp_path=root / "w", timeout=600)
            for a, res in zip(ARCHS, results):
                made[a] = (res, final_weights(root / a))
                assert max(res["norms"]) > 0.3, (a, res["norms"])      # the clip acts in the reference
        return made[arch]
    return get


def check_equal(label, results, run_dir, ref) -> dict:
    """Every rank's losses, grad norms and live parameters, and the run's checkpoint, against ``ref``;
    replicas (DP copies, TP-replicated tensors, both ends of a tied embedding) bitwise equal to each other.
    Returns the largest relative errors measured (printed for the record)."""
    from statex_dist.models import specs_for
    ref_res, ref_ck = ref
    ck = final_weights(run_dir)
    errs = {"loss": 0.0, "norm": 0.0, "ckpt": 0.0, "live": 0.0}
    for r in results:
        assert len(r["losses"]) == len(r["norms"]) == STEPS
        for a, b in zip(r["losses"], ref_res["losses"]):
            errs["loss"] = max(errs["loss"], abs(a - b) / abs(b))
        for a, b in zip(r["norms"], ref_res["norms"]):
            errs["norm"] = max(errs["norm"], abs(a - b) / abs(b))
    assert set(ck.names()) == set(ref_ck.names())
    worst = ""
    for name in ref_ck.names():
        e = rel_err(ck.get(name), ref_ck.get(name))
        if e > errs["ckpt"]:
            errs["ckpt"], worst = e, name
    tp = results[0]["tp"]
    specs = specs_for(ck.config, tp)
    copies: dict = {}
    held = set()
    for r in results:
        for name, live in r["params"].items():
            spec = specs[name]
            want = spec.shard(spec.pad_rows(ref_ck.get(name)), r["tp_rank"], tp, name)
            assert live.shape == want.shape, (label, name, r["rank"])
            errs["live"] = max(errs["live"], rel_err(live, want))
            copies.setdefault((name, r["tp_rank"] if spec.dim is not None else None), []).append((r["rank"], live))
            held.add(name)
    assert held == set(specs), (label, set(specs) - held)
    for (name, _), group in copies.items():
        first_rank, first = group[0]
        for rank, t in group[1:]:
            assert torch.equal(t, first), f"{label}: {name} on rank {rank} differs from rank {first_rank}"
    print(f"\n{label}: max relative error loss {errs['loss']:.1e} grad-norm {errs['norm']:.1e} "
          f"checkpoint {errs['ckpt']:.1e} ({worst}) live {errs['live']:.1e}; copies checked "
          f"{sum(len(g) for g in copies.values())} over {len(results)} ranks")
    assert all(errs[k] <= TOL[k] for k in errs), (label, errs)
    return errs


@pytest.mark.parametrize("arch", list(ARCHS))
def test_one_process_engine_equals_torch_adamw(reference, arch):
    """The reference itself against plain torch (torch_adamw, run in the reference's own process on the
    batches it read): every step's loss and pre-clip grad norm, and the weights after the 10 steps, live
    and as checkpointed, within the tolerances of the layouts (see the docstring)."""
    from statex_dist.models import specs_for
    res, ck = reference(arch)
    ref = res["torch"]
    assert len(ref["losses"]) == len(ref["norms"]) == len(res["losses"]) == STEPS
    assert set(ref["params"]) == set(res["params"]) == set(ck.names())
    specs = specs_for(ck.config, 1)
    errs = {"loss": max(abs(a - b) / abs(b) for a, b in zip(res["losses"], ref["losses"])),
            "norm": max(abs(a - b) / abs(b) for a, b in zip(res["norms"], ref["norms"]))}
    live = {n: rel_err(res["params"][n], t) for n, t in ref["params"].items()}
    ckpt = {n: rel_err(specs[n].pad_rows(ck.get(n)), t) for n, t in ref["params"].items()}
    worst = max(ckpt, key=ckpt.get)
    errs.update(live=max(live.values()), ckpt=ckpt[worst])
    print(f"\n{arch} one-process DeepSpeed vs torch AdamW: max relative error loss {errs['loss']:.1e} grad-norm "
          f"{errs['norm']:.1e} checkpoint {errs['ckpt']:.1e} ({worst}) live {errs['live']:.1e}")
    assert max(ref["norms"]) > 0.3, ref["norms"]                 # the clip acts in the torch loop too
    assert all(errs[k] <= TOL[k] for k in errs), (arch, errs)


LAYOUTS = {  # id: (processes, overrides)
    "dp2": (2, {}),
    "tp2": (2, {"parallel.tp": 2}),
    "pp2": (2, {"parallel.pp": 2}),
    "dp2-zero2": (2, {"parallel.zero_stage": 2}),
    "dp2-zero3": (2, {"parallel.zero_stage": 3, "checkpoint.every": 5}),   # a save mid-run: gathers on every rank
    "dp2tp2": (4, {"parallel.tp": 2}),
    "dp2tp2-zero2": (4, {"parallel.tp": 2, "parallel.zero_stage": 2}),
    "dp2tp2-zero3": (4, {"parallel.tp": 2, "parallel.zero_stage": 3, "checkpoint.every": 5}),
    "tp2pp2": (4, {"parallel.tp": 2, "parallel.pp": 2}),
    "pp2dp2": (4, {"parallel.pp": 2}),
    "pp2-recomputed": (2, {"parallel.pp": 2, "parallel.activation_checkpointing": True}),   # the pipeline's own
    # context parallelism: each sequence of 32 in segments of 16 (statex_dist/parallel/context.py)
    "cp2": (2, {"parallel.cp": 2}),
    "tp2cp2-sp-zero2": (4, {"parallel.tp": 2, "parallel.cp": 2, "parallel.sequence_parallel": True,
                            "parallel.zero_stage": 2}),
    "pp2cp2": (4, {"parallel.pp": 2, "parallel.cp": 2}),
    "cp2-zero3-recomputed": (2, {"parallel.cp": 2, "parallel.zero_stage": 3, "checkpoint.every": 5,
                                 "parallel.activation_checkpointing": True}),
}
CHEAP = {"dp2", "tp2", "pp2", "cp2"}


@pytest.mark.parametrize("layout", [pytest.param(k, marks=() if k in CHEAP else pytest.mark.slow) for k in LAYOUTS])
def test_layout_equals_one_process(tmp_path, shards, reference, layout):
    """Every architecture at ``layout``, one after the other in the same processes."""
    world, extra = LAYOUTS[layout]
    per_rank = run_workers(engine_runs_worker, world,
                           [run_overrides(arch, shards, tmp_path / arch, **extra) for arch in ARCHS],
                           tmp_path=tmp_path / "w", timeout=900)
    for i, arch in enumerate(ARCHS):
        check_equal(f"{arch} {layout}", [r[i] for r in per_rank], tmp_path / arch, reference(arch))
        # fp32 weights are their own master at ZeRO-0/1/2 (ds_setup.share_fp32_master): the optimizer steps
        # storage of the weights on every rank (ZeRO-3's partitions are DeepSpeed's own, not checked here)
        if extra.get("parallel.zero_stage", 1) < 3:
            shared = [r[i]["master_is_weights"] for r in per_rank]
            assert shared == [True] * world, (arch, layout, shared)


VARIANTS = {  # one process, against the reference's 1 micro-batch of 8
    "4x2-accumulated": {"data.micro_batch": 2},
    "recomputed": {"data.micro_batch": 8, "parallel.activation_checkpointing": True},
}


def test_one_process_variants(tmp_path, shards, reference):
    """Every architecture in both variants, one after the other in one process."""
    cases = [(arch, case) for arch in ARCHS for case in VARIANTS]
    (results,) = run_workers(engine_runs_worker, 1, [run_overrides(arch, shards, tmp_path / f"{arch}-{case}",
                                                                   **VARIANTS[case]) for arch, case in cases],
                             tmp_path=tmp_path / "w", timeout=900)
    for (arch, case), res in zip(cases, results):
        check_equal(f"{arch} {case}", [res], tmp_path / f"{arch}-{case}", reference(arch))
