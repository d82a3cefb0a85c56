"""TP=2 and DP=2 x TP=2 over gloo equal the single-process model: loss, every gradient gathered back to
full shape, and the weights after one SGD step (fp32, max relative error <= 1e-5)."""
import dataclasses

import pytest

from tests.conftest import rel_err
from tests.dist_utils import run_workers
from tests.parallel_cases import CASES, batch, reference_weights, single_process, tp_dp_worker, trim_padding

TOL = 1e-5


def _compare(ref, got):
    loss, grads, new = ref
    g_loss, g_grads, g_new = got
    g_grads, g_new = trim_padding(g_grads, grads), trim_padding(g_new, new)
    assert abs(g_loss - loss) <= TOL * abs(loss)
    assert set(g_grads) == set(grads)
    bad = {n: rel_err(g_grads[n], grads[n]) for n in grads if rel_err(g_grads[n], grads[n]) > TOL}
    assert not bad, f"gradients differ: {bad}"
    bad = {n: rel_err(g_new[n], new[n]) for n in new if rel_err(g_new[n], new[n]) > TOL}
    assert not bad, f"weights after the step differ: {bad}"


@pytest.mark.parametrize("case,tp,world", [
    ("gla-mixed", 2, 2), ("mamba2-g1", 2, 2), ("mamba2-g2", 2, 2),
    ("gla-mixed", 2, 4), ("mamba2-g1", 2, 4),
    pytest.param("gla-tied", 2, 2, marks=pytest.mark.slow),
    pytest.param("gla-mixed", 4, 4, marks=pytest.mark.slow),
    pytest.param("mamba2-g2", 4, 4, marks=pytest.mark.slow),
])
def test_tp_dp_equals_single_process(tmp_path, case, tp, world):
    cfg = CASES[case]
    weights = reference_weights(cfg)
    ids, labels = batch(cfg)
    ref = single_process(cfg, weights, ids, labels)
    got = run_workers(tp_dp_worker, world, tp, cfg.to_dict(), weights, ids, labels, tmp_path=tmp_path)[0]
    _compare(ref, got)
