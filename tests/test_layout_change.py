"""A run resumed at another TP x PP x CP x DP x ZeRO layout loses nothing: through statex_dist.train.Run and the
real engine, fp32, GLA with a merged 1-head layer and Mamba2 with an expanded d_state (ngroups 1, tied
embeddings on both pipeline ends at PP=2).

Each case trains 10 steps at one layout, saving at step 5, and resumes that checkpoint at another layout:
- on every rank of the resumed run, the fp32 master weights and both AdamW moments the optimizer holds
  after the resume (its TP slice, whole over its DP group) are exactly the same slice of those the first run
  saved, and its first save (before any step) holds them gathered to full shape (bitwise: they are copied,
  never recomputed);
- on every rank its 5 steps give the first run's losses for steps 6..10 within 1e-5 relative: the data order does not
  depend on the layout (data/pipeline.py), and the layouts sum the same terms in other orders (see
  tests/test_engine_equality.py for the size of that rounding, ~1e-7). Moments that started afresh move the
  loss by ~5e-4 within 5 steps here (checked: the weights-only resume is far outside the bound).
"""
from __future__ import annotations

import pytest
import torch

from tests.dist_utils import run_workers
from tests.test_engine_equality import ARCHS, engine_runs_worker, engine_worker, run_overrides
from tests.train_helpers import aligned_shards

TOL = 1e-5
CASES = {  # id: (saved at: processes, overrides), (resumed at: processes, overrides)
    "tp2pp2-to-dp2": ((4, {"parallel.tp": 2, "parallel.pp": 2}), (2, {})),
    "one-to-tp2pp2": ((1, {}), (4, {"parallel.tp": 2, "parallel.pp": 2})),
    "dp2-zero2-to-one": ((2, {"parallel.zero_stage": 2}), (1, {})),
    # context parallelism holds no state of its own: a resume at another CP is only a regrouping
    "cp2-to-one": ((2, {"parallel.cp": 2}), (1, {})),
}
CHEAP = {"dp2-zero2-to-one", "cp2-to-one"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return aligned_shards(tmp_path_factory.mktemp("layout-data"))


def resumed_worker(rank, world, runs: list, restored: bool = True):
    """Each run of ``runs`` (override lists) in turn in the same processes: resume, read the optimizer state
    this rank holds (with ``restored``: each parameter's fp32 master and moments, its TP slice whole over
    its DP group, keyed (kind, name)), save at once (the converted state), then train on. Per run: the
    losses, the state read and this rank's place."""
    from statex_dist.models.names import named_internal_parameters
    from statex_dist.parallel import state
    from statex_dist.run_config import load_run_config
    from statex_dist.train import Run
    from statex_dist.training.optimizer_state import full_state
    out = []
    for overrides_list in runs:
        run = Run(load_run_config(None, overrides_list))
        held = {}
        if restored:
            for name, p in named_internal_parameters(run.module):
                held.update({(k, name): t for k, t in full_state(run.engine, p).items()})
        run.save()
        losses = run.train()["losses"]
        out.append({"losses": losses, "restored": held, "rank": rank, "tp_rank": run.tp_rank,
                    "tp": run.run_cfg.parallel.tp})
    state.destroy()
    return out


def check_restored(saved: dict, config, ranks: list, label: str) -> int:
    """Every rank's optimizer state after a resume (resumed_worker's "restored") bitwise equal to the same
    slice of the state ``saved`` (_optimizer) of the model ``config``, every saved tensor held by some rank.
    Returns how many tensors were compared."""
    from statex_dist.models import specs_for
    n, held = 0, set()
    for r in ranks:
        specs = specs_for(config, r["tp"])
        assert r["restored"], (label, r["rank"])
        for (k, name), t in r["restored"].items():
            spec = specs[name]
            want = spec.shard(spec.pad_rows(saved[(k, name)]), r["tp_rank"], r["tp"], name)
            assert t.shape == want.shape and torch.equal(t, want), (
                f"{label}: rank {r['rank']} holds another {k} of {name} than the one saved (max |diff| "
                f"{(t - want).abs().max().item() if t.shape == want.shape else 'shape'})")
            n += 1
            held.add((k, name))
    assert held == set(saved), (label, set(saved) - held)
    return n


def check_losses(ranks: list, want: list, label: str) -> float:
    """Every rank's losses after a resume (each reports the DP-mean loss) against ``want``, the
    uninterrupted run's for the same steps, step by step within TOL; returns the largest relative error."""
    errs = []
    for r in ranks:
        assert len(r["losses"]) == len(want), (label, r["rank"], r["losses"])
        errs += [abs(a - b) / abs(b) for a, b in zip(r["losses"], want)]
    assert max(errs) <= TOL, (label, errs)
    return max(errs)


def _optimizer(run_dir, step: int) -> tuple[dict, object]:
    """The optimizer state a run saved at ``step``, full shape, keyed (kind, name) (the fp32 master from
    model/, where fp32 weights stand for it); and the model config."""
    from statex_dist.training.optimizer_state import stored
    out = {}
    for k, ck in stored(run_dir / "checkpoints" / f"step{step:08d}").items():
        out.update({(k, n): ck.get(n) for n in ck.names()})
    return out, ck.config


@pytest.mark.parametrize("case", [pytest.param(k, marks=() if k in CHEAP else pytest.mark.slow) for k in CASES])
def test_resume_at_another_layout(tmp_path, shards, case, capfd):
    """Every architecture, one after the other in the same processes (one set saving, one resuming)."""
    (w1, o1), (w2, o2) = CASES[case]
    first = run_workers(engine_runs_worker, w1, [run_overrides(arch, shards, tmp_path / f"a-{arch}", **o1, **{
        "checkpoint.every": 5}) for arch in ARCHS], tmp_path=tmp_path / "wa", timeout=900)
    second = run_workers(resumed_worker, w2, [run_overrides(arch, shards, tmp_path / f"b-{arch}", **o2, **{
        "checkpoint.every": 5, "checkpoint.resume": str(tmp_path / f"a-{arch}" / "checkpoints" / "step00000005")})
        for arch in ARCHS], tmp_path=tmp_path / "wb", timeout=900)
    out = capfd.readouterr().out
    assert out.count("converted from") == len(ARCHS) and "AdamW moments (step 5)" in out, out[-2000:]
    for i, arch in enumerate(ARCHS):
        label = f"{arch} {case}"
        ranks = [r[i] for r in second]
        (saved, config), (converted, _) = _optimizer(tmp_path / f"a-{arch}", 5), _optimizer(tmp_path / f"b-{arch}", 5)
        assert any(t.abs().max() > 0 for (k, _), t in saved.items() if k == "exp_avg_sq")
        n = check_restored(saved, config, ranks, label)
        assert saved.keys() == converted.keys()
        for key, t in saved.items():
            assert torch.equal(converted[key], t), (label, key)
        err = check_losses(ranks, first[0][i]["losses"][5:], label)
        print(f"\n{label}: {n} restored tensors equal to the saved ones on {len(ranks)} ranks; max relative "
              f"loss error over the 5 resumed steps {err:.1e}")


def test_weights_only_resume_is_outside_the_bound(tmp_path, shards):
    """The bound above can fail: the same resume with the optimizer state withheld (a checkpoint from before
    it was saved) drifts by far more than 1e-5, and says so in its one line."""
    import shutil
    first = run_workers(engine_worker, 1, run_overrides("gla", shards, tmp_path / "a", **{"checkpoint.every": 5}),
                        tmp_path=tmp_path / "wa", timeout=600)
    resume = tmp_path / "a" / "checkpoints" / "step00000005"
    shutil.rmtree(resume / "optimizer")
    ((second,),) = run_workers(resumed_worker, 1, [run_overrides("gla", shards, tmp_path / "b", **{
        "parallel.zero_stage": 2, "checkpoint.every": 5, "checkpoint.resume": str(resume)})], False,
        tmp_path=tmp_path / "wb", timeout=600)
    assert len(second["losses"]) == 5
    err = max(abs(a - b) / abs(b) for a, b in zip(second["losses"], first[0]["losses"][5:]))
    assert err > 20 * TOL, err


@pytest.mark.parametrize("arch,saved_at,was", [
    ("gla", {"parallel.tp": 2}, "TP=2 PP=1 DP=1"),
    ("mamba2", {"parallel.cp": 2}, "TP=1 PP=1 CP=2 DP=1")])
def test_launch_resume_at_another_layout_says_so(tmp_path, arch, saved_at, was):
    """Through launch/train.sh as a user types it: 2 steps at TP=2 (GLA) or CP=2 (Mamba2: each sequence of 64
    in two segments of 32) on two processes, then the step-2 checkpoint resumed by path in one process
    (DEBUG=1): one line says what was converted, and from what."""
    from tests.test_faults import finish, overrides, start
    from tests.train_helpers import make_shards
    data = make_shards(tmp_path / "data", seq_len=64, samples_per_shard=16)
    text = finish(start(arch, overrides(data, tmp_path / "a", 2, 2, **saved_at), tmp_path / "a.log", nproc=2),
                  tmp_path / "a.log")
    if "parallel.cp" in saved_at:
        assert f"| TP=1 PP=1 CP=2 DP=1 ZeRO-1 on 2 processes |" in text, text[:2000]
        assert "sequences of 64 tokens, each in 2 segments of 32 (one a CP rank)" in text, text[:2000]
    ckpt = tmp_path / "a" / "checkpoints" / "step00000002"
    text = finish(start(arch, overrides(data, tmp_path / "b", 3, 0, **{"checkpoint.resume": ckpt}),
                        tmp_path / "b.log"), tmp_path / "b.log")
    lines = [ln for ln in text.splitlines() if "resumed from" in ln]
    assert lines == [f"[statex-dist] resumed from {ckpt} at step 2: converted from {was} ZeRO-1 to "
                     f"TP=1 PP=1 DP=1 ZeRO-1: weights, fp32 master weights and AdamW moments (step 2), schedule "
                     f"and data position"], text[-3000:]
    assert "step 3/3" in text


def test_tp1_checkpoint_resumes_at_tp2(tmp_path, shards, capfd):
    """A TP=1 run's step-5 checkpoint continued at TP=2 in two ways, one after the other in the same two
    processes: resumed directly (converted in the run), and through tools/reshard_expand.py --tp 2 (which
    writes the weights and the optimizer state at TP=2). Each way and architecture, on both ranks: the fp32
    master weights and AdamW moments held after the resume are the rank's slice of those saved, bitwise; the
    first save holds them exactly; the 5 steps' losses are the uninterrupted run's for steps 6..10 within
    1e-5. Every architecture runs in the same processes (one saving, one resuming)."""
    import subprocess
    import sys

    from statex_dist.checkpoint.sharded import ShardedCheckpoint
    from tests.train_helpers import ROOT
    (first,) = run_workers(engine_runs_worker, 1, [run_overrides(arch, shards, tmp_path / f"a-{arch}", **{
        "checkpoint.every": 5}) for arch in ARCHS], tmp_path=tmp_path / "wa", timeout=900)
    ways = {}
    for arch in ARCHS:
        src, dst = tmp_path / f"a-{arch}" / "checkpoints" / "step00000005", tmp_path / f"tp2-{arch}"
        r = subprocess.run([sys.executable, "tools/reshard_expand.py", "--src", str(src), "--dst", str(dst),
                            "--tp", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "(sharded TP=2 x PP=1, with the optimizer state)" in r.stdout, r.stdout
        assert ShardedCheckpoint(dst / "optimizer" / "exp_avg").tp == 2
        ways.update({(arch, "direct"): src, (arch, "reshard-tool"): dst})
    capfd.readouterr()
    per_rank = run_workers(resumed_worker, 2, [run_overrides(arch, shards, tmp_path / f"{way}-{arch}", **{
        "parallel.tp": 2, "checkpoint.every": 5, "checkpoint.resume": str(ck)}) for (arch, way), ck in ways.items()],
        tmp_path=tmp_path / "wb", timeout=900)
    out = capfd.readouterr().out
    for i, ((arch, way), ck) in enumerate(ways.items()):
        if way == "direct":
            assert (f"resumed from {ck} at step 5: converted from TP=1 PP=1 DP=1 ZeRO-1 to TP=2 PP=1 DP=1 "
                    f"ZeRO-1: weights, fp32 master weights and AdamW moments (step 5)") in out, out[-3000:]
        saved, config = _optimizer(tmp_path / f"a-{arch}", 5)
        assert any(t.abs().max() > 0 for (k, _), t in saved.items() if k == "exp_avg_sq")
        ranks = [r[i] for r in per_rank]
        n = check_restored(saved, config, ranks, f"{arch} {way}")
        converted, _ = _optimizer(tmp_path / f"{way}-{arch}", 5)
        assert saved.keys() == converted.keys()
        for key, t in saved.items():
            assert torch.equal(converted[key], t), (arch, way, key)
        err = check_losses(ranks, first[list(ARCHS).index(arch)]["losses"][5:], f"{arch} {way}")
        print(f"\n{arch} TP=1 -> TP=2 {way}: {n} restored tensors equal to the saved ones on 2 ranks; max "
              f"relative loss error over the 5 resumed steps {err:.1e}")
