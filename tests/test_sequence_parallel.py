"""Sequence parallelism (statex_dist.parallel.sequence) at TP=2 over gloo equals the single-process model on
every rank: each rank's losses, logits, gradient shards and weight shards after one SGD step against the
same slices of the one-process tensors (parallel_cases.compare_ranks; fp32, max relative error <= 1e-5, as
in test_tensor_parallel.py); T not divisible by TP is refused; a training run with parallel.sequence_parallel=true
gives the losses of the same run without it."""
import math

import pytest

from tests.dist_utils import run_workers
from tests.parallel_cases import CASES, batch, compare_ranks, reference_weights, single_process, tp_dp_worker
from tests.test_tensor_parallel import TOL
from tests.train_helpers import GLA, make_shards, overrides

T = 20  # a multiple of TP
# GLA and Gated DeltaNet by heads and by values; Mamba2 B/C gathered, split
DEFAULT = ("gla-mixed", "mamba2-g1", "mamba2-g2", "gdn-mixed")


def _collectives(rank, world):
    """The time-dim all-gather and reduce-scatter on gloo, through the single-tensor collectives NCCL runs
    too, on a [T, B, ...] copy. Returns the max errors against the expected tensors."""
    import torch

    from statex_dist.parallel import sequence, state
    g = state.tp_group()
    full = [torch.randn(3, 4 * world, 5, generator=torch.Generator().manual_seed(r)) for r in range(world)]
    total, t = sum(full), 4
    errs = {}
    gathered = sequence._all_gather_t(full[rank][:, rank * t:(rank + 1) * t], g)  # non-contiguous
    want = torch.cat([full[r][:, r * t:(r + 1) * t] for r in range(world)], dim=1)
    errs["gather"] = (gathered - want).abs().max().item()
    scattered = sequence._reduce_scatter_t(full[rank], g)
    errs["scatter"] = (scattered - total[:, rank * t:(rank + 1) * t]).abs().max().item()
    return errs


def _sp_worker(rank, world, cases, odd_ids):
    """One set of TP=``world`` ranks for several cases (one start-up): each case's results of this rank
    (parallel_cases.tp_dp_step) with sequence parallelism, the error of a forward whose T does not split, and the
    collectives' errors (_collectives)."""
    from statex_dist.models.config import config_from_dict
    from statex_dist.models import build_model
    from statex_dist.parallel import state
    from tests.parallel_cases import tp_dp_step
    state.initialize(world, 1)
    out = {name: tp_dp_step(world, *args, sequence_parallel=True) for name, args in cases.items()}
    out["collectives"] = _collectives(rank, world)
    model = build_model(config_from_dict(cases[DEFAULT[1]][0]), sequence_parallel=True)
    try:
        model(odd_ids)
        out["error"] = None
    except ValueError as e:
        out["error"] = str(e)
    state.destroy()
    return out


@pytest.fixture(scope="module")
def sp_runs(tmp_path_factory):
    """References (one process: loss, grads, weights after SGD, logits; and the labels) and every rank's
    TP=2 SP results of the default cases; every rank's T-error message."""
    refs, cases = {}, {}
    for name in DEFAULT:
        cfg = CASES[name]
        weights = reference_weights(cfg)
        ids, labels = batch(cfg, T=T)
        refs[name] = single_process(cfg, weights, ids, labels, logits=True), labels
        cases[name] = (cfg.to_dict(), weights, ids, labels)
    odd = batch(CASES[DEFAULT[1]], B=1, T=7)[0]
    got = run_workers(_sp_worker, 2, cases, odd, tmp_path=tmp_path_factory.mktemp("sp"), timeout=300)
    return refs, got


@pytest.mark.parametrize("case", DEFAULT)
def test_sp_tp2_equals_single_process(sp_runs, case):
    refs, got = sp_runs
    worst = compare_ranks(CASES[case], *refs[case], [rank_out[case] for rank_out in got], TOL)
    print(f"\n{case} SP TP=2: max relative error " + "; ".join(f"{k} {e:.1e} ({w})" for k, (e, w) in worst.items()))


@pytest.mark.slow
@pytest.mark.parametrize("case,tp,world", [
    ("gla-tied", 2, 2), ("gla-mixed", 2, 4), ("gla-mixed", 4, 4), ("mamba2-g2", 4, 4), ("gdn-mixed", 4, 4),
])
def test_sp_layouts_equal_single_process(tmp_path, case, tp, world):
    cfg = CASES[case]
    weights = reference_weights(cfg)
    ids, labels = batch(cfg, T=T)
    ref = single_process(cfg, weights, ids, labels, logits=True)
    got = run_workers(tp_dp_worker, world, tp, cfg.to_dict(), weights, ids, labels, True, tmp_path=tmp_path)
    worst = compare_ranks(cfg, ref, labels, got, TOL)
    print(f"\n{case} SP TP={tp} on {world} ranks: max relative error " +
          "; ".join(f"{k} {e:.1e} ({w})" for k, (e, w) in worst.items()))


def test_time_collectives_along_dim_1(sp_runs):
    for rank_out in sp_runs[1]:
        errs = rank_out["collectives"]
        assert len(errs) == 2 and max(errs.values()) < 1e-6, errs


def test_seq_len_not_divisible_by_tp_is_refused(sp_runs):
    for rank_out in sp_runs[1]:  # on every rank, before any collective waits on a peer
        e = rank_out["error"]
        assert e is not None and "T=7" in e and "TP=2" in e and "parallel.sequence_parallel=false" in e, e


def test_config_refuses_sp_with_pipeline():
    from statex_dist.run_config import load_run_config
    with pytest.raises(ValueError, match="sequence_parallel=true with parallel.pp=2"):
        load_run_config(None, ["parallel.tp=2", "parallel.pp=2", "parallel.sequence_parallel=true"])
    assert load_run_config(None, ["parallel.sequence_parallel=true"]).parallel.sequence_parallel  # tp=1: no-op


def test_sp_at_tp1_is_a_no_op():
    import torch

    from statex_dist.models import build_model
    cfg = CASES["gla-mixed"]
    torch.manual_seed(0)
    model = build_model(cfg, sequence_parallel=True)
    assert not model.sequence_parallel
    ids, labels = batch(cfg, T=7)   # T not divisible by 2: nothing is split at TP=1
    loss = model(ids, labels=labels)
    assert torch.isfinite(loss)
    torch.manual_seed(0)
    assert torch.equal(loss, build_model(cfg)(ids, labels=labels))  # the same weights, the same loss


def _train_twice_worker(rank, world, ov_off, ov_on):
    """Two runs in one set of processes (the same groups): SP off, then SP on. Returns both loss lists."""
    from statex_dist.parallel import state
    from statex_dist.run_config import load_run_config
    from statex_dist.train import Run
    out = [Run(load_run_config(None, ov)).train()["losses"] for ov in (ov_off, ov_on)]
    state.destroy()
    return out


def test_train_with_sequence_parallel(tmp_path):
    shards = make_shards(tmp_path / "data")
    ov = [overrides(GLA, shards, tmp_path / name, steps=3, **{"parallel.tp": 2, "parallel.sequence_parallel": sp})
          for name, sp in (("off", "false"), ("on", "true"))]
    off, on = run_workers(_train_twice_worker, 2, *ov, tmp_path=tmp_path / "w", timeout=300)[0]
    assert len(on) == 3 and all(math.isfinite(l) for l in on), on
    assert all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(on, off)), (on, off)
