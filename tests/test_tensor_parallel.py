"""TP=2 and DP=2 x TP=2 (TP=4 in the slow set) over gloo equal the single-process model on every rank: each
rank's loss (the DP mean, and that of its own rows), its logits (its vocabulary slice), its shard of every
gradient and of every weight after one SGD step, each against the same slice of the one-process tensors;
TP vocabulary padding exactly zero and replicas bitwise equal (parallel_cases.compare_ranks).

Tolerance: relative error <= 1e-5 in fp32, per tensor and rank: max |a - b| over the rank's slice divided by
max |b| over the whole one-process tensor. The layouts sum the same terms in other orders (TP partial sums,
DP all-reduces); measured over every case here and in test_sequence_parallel.py (slow ones included):
losses <= 1.2e-7, logits <= 6.2e-7, weights after the step <= 5.1e-7, gradients <= 2.4e-6 (the per-head
A_log, dt_bias and a_proj of Mamba2 and Gated DeltaNet: each a sum over every position of the batch; Gated
DeltaNet's TP=2 and TP=4 cases, with and without sequence parallelism, measured 1.3e-6 to 2.4e-6). Divided by the slice's own max
instead, a TP=4 rank's few heads of dt_bias gave 9.3e-6, too near the bound for CPUs that round otherwise.
A wrong shard or a missing DP average is off by order 1 (an unaveraged DP=2 gradient is twice the
reference).

Each (TP, world) layout runs all its cases in one set of processes (``parallel_cases.cases_worker``); the default and
the slow cases separately, so the default set starts no process for a slow one."""
import pytest

from tests.dist_utils import run_workers
from tests.parallel_cases import CASES, cases_worker, compare_ranks, prepared

TOL = 1e-5


RUNS = {  # (default or slow, TP, world) -> its cases, run together
    ("default", 2, 2): ["gla-mixed", "mamba2-g1", "mamba2-g2", "gdn-mixed"],
    ("default", 2, 4): ["gla-mixed", "mamba2-g1"],
    ("slow", 2, 2): ["gla-tied"],
    ("slow", 4, 4): ["gla-mixed", "mamba2-g2", "gdn-mixed"],
}


@pytest.fixture(scope="module")
def layout_runs(tmp_path_factory):
    """(kind, tp, world) -> (references, every rank's results), made on first use."""
    made = {}

    def get(kind, tp, world):
        if (kind, tp, world) not in made:
            refs, args = prepared(RUNS[kind, tp, world], logits=True)
            got = run_workers(cases_worker, world, tp, 1, args,
                              tmp_path=tmp_path_factory.mktemp(f"tp{tp}-w{world}"), timeout=600)
            made[kind, tp, world] = refs, got
        return made[kind, tp, world]
    return get


@pytest.mark.parametrize("kind,case,tp,world", [
    pytest.param(kind, case, tp, world, marks=() if kind == "default" else pytest.mark.slow)
    for (kind, tp, world), cases in RUNS.items() for case in cases])
def test_tp_dp_equals_single_process(layout_runs, kind, case, tp, world):
    cfg = CASES[case]
    refs, per_rank = layout_runs(kind, tp, world)
    (ref, labels), got = refs[case], [r[case] for r in per_rank]
    worst = compare_ranks(cfg, ref, labels, got, TOL)
    print(f"\n{case} TP={tp} on {world} ranks: max relative error " +
          "; ".join(f"{k} {e:.1e} ({where})" for k, (e, where) in worst.items()))
