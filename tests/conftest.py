import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: the relative error every numerical test here states its tolerance in."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


@pytest.fixture(scope="session", autouse=True)
def _debug_world():
    # One process = a world of one with megatron-core groups TP=PP=1 (what load_model sets up itself).
    from statex_dist.parallel import state
    state.ensure_initialized()
    yield
