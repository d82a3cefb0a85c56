"""DeepSpeed's pipeline engine over gloo (ZeRO-1, fp32) at PP=2 and TP=2 x PP=2 equals the single-process
model: loss, every gradient gathered back to full shape under the model's own names, and the weights
after one SGD step (max relative error <= 1e-5).

Each step runs 2 micro-batches (the engine's 1F1B schedule), which matches the one-process token mean
because every micro-batch has the same number of labelled tokens.
"""
import dataclasses

import pytest
import torch

from tests.conftest import rel_err
from tests.dist_utils import run_workers
from tests.parallel_cases import (CASES, LR, batch, engine_tp_worker, pipeline_cases_worker,
                                  pipeline_start_errors_worker, pipeline_worker, prepared, reference_weights,
                                  single_process, trim_padding)

TOL = 1e-5
MICRO, ACCUM = 2, 2  # with batch()'s 4 sequences: 2 micro-batches per pipeline at DP = 1


def _run(tmp_path, case, tp, pp, world, micro=MICRO, accum=ACCUM, clip=0.0, ckpt_interval=0):
    cfg = CASES[case]
    weights = reference_weights(cfg)
    ids, labels = batch(cfg)
    assert (labels != -100).all()  # equal token counts per micro-batch: mean of means = one-process mean
    ref = single_process(cfg, weights, ids, labels)
    got = run_workers(pipeline_worker, world, tp, pp, cfg.to_dict(), weights, ids, labels, micro, accum, clip,
                      ckpt_interval, tmp_path=tmp_path, timeout=180)[0]
    return cfg, weights, ref, got


def _compare(ref, got, new_ref=None):
    loss, grads, new = ref
    new = new_ref or new
    g_loss, g_grads, g_new, tied_gap = got
    g_grads, g_new = trim_padding(g_grads, grads), trim_padding(g_new, new)
    assert abs(g_loss - loss) <= TOL * abs(loss), (g_loss, loss)
    assert set(g_grads) == set(grads) and set(g_new) == set(new)
    bad = {n: rel_err(g_grads[n], grads[n]) for n in grads if rel_err(g_grads[n], grads[n]) > TOL}
    assert not bad, f"gradients differ: {bad}"
    bad = {n: rel_err(g_new[n], new[n]) for n in new if rel_err(g_new[n], new[n]) > TOL}
    assert not bad, f"weights after the step differ: {bad}"
    assert tied_gap == 0.0, f"the two copies of the tied embedding drifted apart by {tied_gap}"


PIPELINES = {  # (TP, PP, world) -> its cases, run together in one set of processes
    (1, 2, 2): ["gla-mixed",    # untied head; 4-head and 1-head layers
                "mamba2-g1"],   # tied embedding on the first and last stage
    (2, 2, 4): ["gla-mixed",    # head- and value-sharded layers inside a pipeline
                "mamba2-g1",    # whole B/C and a spanning gated norm, tied embedding, TP x PP
                "gdn-mixed"],   # Gated DeltaNet: grouped head-sharded and value-sharded layers, TP x PP
}


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory):
    """(tp, pp, world) -> ({case: one-process reference}, rank 0's results by case), made on first use."""
    made = {}

    def get(tp, pp, world):
        if (tp, pp, world) not in made:
            refs, args = prepared(PIPELINES[tp, pp, world])
            # equal token counts per micro-batch: the mean of their means is the one-process mean
            assert all((labels != -100).all() for _, labels in refs.values())
            args = {name: (*a, MICRO, ACCUM) for name, a in args.items()}
            got = run_workers(pipeline_cases_worker, world, tp, pp, args,
                              tmp_path=tmp_path_factory.mktemp(f"pp{pp}"), timeout=600)[0]
            made[tp, pp, world] = refs, got
        return made[tp, pp, world]
    return get


@pytest.mark.parametrize("case,tp,pp,world", [(c, *k) for k, cases in PIPELINES.items() for c in cases])
def test_pipeline_equals_single_process(pipeline_runs, case, tp, pp, world):
    refs, got = pipeline_runs(tp, pp, world)
    _compare(refs[case][0], got[case])


@pytest.mark.slow
@pytest.mark.parametrize("case,tp,pp,world,micro,accum", [
    ("mamba2-g2", 1, 2, 2, MICRO, ACCUM),
    ("gla-tied", 1, 2, 2, MICRO, ACCUM),
    ("mamba2-g2", 2, 2, 4, MICRO, ACCUM),
    ("gla-mixed", 1, 4, 4, 1, 4),     # a stage per layer and more micro-batches than stages
    ("gla-mixed", 1, 2, 4, 1, 2),     # PP x DP: ZeRO-1 shards over the 2 data-parallel pipelines
    ("mamba2-g1", 1, 2, 4, 1, 2),     # PP x DP with the tied embedding
])
def test_pipeline_more_layouts(tmp_path, case, tp, pp, world, micro, accum):
    _, _, ref, got = _run(tmp_path, case, tp, pp, world, micro, accum)
    _compare(ref, got)


@pytest.mark.slow
def test_activation_checkpointing_keeps_gradients(tmp_path):
    # every block recomputed in backward; the embedding is never wrapped (its input ids carry no grad)
    _, _, ref, got = _run(tmp_path, "mamba2-g1", 1, 2, 2, ckpt_interval=1)
    _compare(ref, got)


@pytest.mark.slow
@pytest.mark.parametrize("case,tp,pp,world", [("gla-mixed", 2, 2, 4), ("mamba2-g2", 2, 2, 4)])
def test_gradient_clipping_norm_spans_tp_and_pp(tmp_path, case, tp, pp, world):
    """DeepSpeed's ZeRO-1 clip (max norm 1) sums the norm over TP and PP, counting replicas once."""
    cfg, weights, ref, got = _run(tmp_path, case, tp, pp, world, clip=1.0)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in ref[1].values())).item()
    assert norm > 1.0  # so the clip acts
    scale = 1.0 / (norm + 1e-6)
    clipped = {n: weights[n] - LR * scale * ref[1][n] for n in weights}
    _compare(ref, got, new_ref=clipped)


@pytest.mark.slow
def test_clip_norm_counts_bc_blocks_once(tmp_path):
    # DeepSpeed counts a tensor as TP-split or replicated as a whole: Mamba2's B/C rows at ngroups < TP are
    # split over TP (and their activations gathered) so that no block is counted once per TP rank
    cfg, weights, ref, got = _run(tmp_path, "mamba2-g1", 2, 2, 4, clip=1.0)
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in ref[1].values())).item()
    n = "embedding.weight"  # the clip factor the engine applied, read off one parameter's update
    step = (weights[n] - trim_padding(got[2], ref[2])[n]).double().flatten()
    g = ref[1][n].double().flatten()
    applied = (step @ g / (LR * (g @ g))).item()
    # an error here is small (B/C gradients are a sliver of the norm): hence the tight bound
    assert abs(applied * (norm + 1e-6) - 1) < 1e-6, applied * (norm + 1e-6) - 1


def test_megatron_mpu_engine_without_pipeline(tmp_path):
    # TP=2 on 2 ranks through DeepSpeed's plain engine: with MegatronMPU ZeRO sees DP=1 (without it, 2
    # "DP ranks" whose gradients it would average: a wrong step)
    cfg = CASES["gla-mixed"]
    weights = reference_weights(cfg)
    ids, labels = batch(cfg)
    loss, _, new = single_process(cfg, weights, ids, labels)
    g_loss, g_new, seen_dp = run_workers(engine_tp_worker, 2, 2, cfg.to_dict(), weights, ids, labels,
                                         tmp_path=tmp_path, timeout=120)[0]
    assert seen_dp == 1
    assert abs(g_loss - loss) <= TOL * abs(loss)
    g_new = trim_padding(g_new, new)
    bad = {n: rel_err(g_new[n], new[n]) for n in new if rel_err(g_new[n], new[n]) > TOL}
    assert not bad, f"weights after the step differ: {bad}"


def test_sizes_fail_before_any_process_group():
    from statex_dist.models.pipeline import validate_parallel
    with pytest.raises(ValueError, match=r"PP=4 is larger than the 2 layers; PP must be <= 2"):
        validate_parallel(CASES["mamba2-g1"], world_size=4, tp=1, pp=4)
    with pytest.raises(ValueError, match=r"world size 6 is not a multiple of TP x PP = 2 x 2.*pairs that work"):
        validate_parallel(CASES["gla-mixed"], world_size=6, tp=2, pp=2)
    assert validate_parallel(CASES["gla-mixed"], world_size=8, tp=2, pp=2) == 2


def test_start_up_mistakes_fail_on_every_rank(tmp_path):
    # megatron-core accepts PP=2 on 2 ranks, but a 1-layer model cannot fill 2 stages; and a DeepSpeed
    # grid that disagrees with megatron-core (there TP=2) would let ZeRO shard over TP ranks. Every rank
    # must raise: a rank that went on would wait forever in DeepSpeed's next collective.
    cfg = dataclasses.replace(CASES["mamba2-g2"], num_layers=1, d_state=[8])
    results = run_workers(pipeline_start_errors_worker, 2, cfg.to_dict(), tmp_path=tmp_path, timeout=90)
    for rank, (too_short, grid) in enumerate(results):
        assert too_short is not None and "PP=2 is larger than the 1 layers; PP must be <= 1" in too_short
        assert grid is not None and "disagree" in grid and f"TP: DeepSpeed (rank {rank} of 2" in grid, grid
