"""One initialisation at every layout: the same seed gives bit-identical full weights at TP=1, 2, 4 and PP=1, 2,
and the weights follow the source libraries' schemes (statex_dist.models.init)."""
import math

import pytest
import torch

from statex_dist.models.config import config_from_dict
from tests.dist_utils import run_workers
from tests.parallel_cases import CASES

# head- and value-sharded GLA and Gated DeltaNet layers; Mamba2 with B/C gathered over TP
ARCHS = ("gla-mixed", "mamba2-g1", "gdn-mixed")
SEED = 7


def _full_at(rank, world, tp, pp, seed):
    """Every arch built with init on this layout, gathered to full shape (vocab rows as the checkpoint's)."""
    from statex_dist.models import build_model, specs_for
    from statex_dist.models import pipeline
    from statex_dist.models.init import copy_shards, fresh_weights
    from statex_dist.parallel import state, weights
    from statex_dist.training.initial_weights import named_internal_parameters
    state.initialize(tp, pp)
    out = {}
    for arch in ARCHS:
        cfg, specs = CASES[arch], specs_for(CASES[arch], tp)
        if pp == 1:
            full = weights.gather_full(build_model(cfg, seed=seed), specs)
        else:  # a stage is initialised the way a run does it (statex_dist.training.initial_weights.fill)
            module = pipeline.pipeline_module(cfg, torch.float32, tp, pp)
            copy_shards(named_internal_parameters(module), fresh_weights(cfg, seed), specs, state.tp_rank(), tp)
            full = pipeline.gather_full(module, specs)
        out[arch] = _trim(cfg, full)
    state.destroy()
    return out


def _trim(cfg, full):
    v = cfg.checkpoint_vocab_size()
    for name, t in full.items():
        if t.shape[0] > v and name.endswith(("embeddings.weight", "embedding.weight", "lm_head.weight")):
            assert not t[v:].any(), f"{name}: TP padding rows must be zero"
            full[name] = t[:v]
    return full


@pytest.fixture(scope="module")
def one_process():
    """TP=1 PP=1 in this process (a world of one), checked to hold exactly the scheme's tensors."""
    from statex_dist.models.init import fresh_weights
    from statex_dist.parallel import state
    ref = _full_at(0, 1, 1, 1, SEED)
    state.ensure_initialized()
    for arch in ARCHS:
        get = fresh_weights(CASES[arch], SEED)
        assert all(torch.equal(t, get(n)) for n, t in ref[arch].items()), arch
    return ref


@pytest.mark.parametrize("tp,pp", [(2, 1), pytest.param(4, 1, marks=pytest.mark.slow),
                                   (1, 2)], ids=["tp2", "tp4", "pp2"])
def test_same_full_weights_at_every_layout(tmp_path, one_process, tp, pp):
    got = run_workers(_full_at, tp * pp, tp, pp, SEED, tmp_path=tmp_path, timeout=300)
    for rank_out in got:
        for arch in ARCHS:
            assert rank_out[arch].keys() == one_process[arch].keys(), arch
            bad = [n for n in one_process[arch] if not torch.equal(rank_out[arch][n], one_process[arch][n])]
            assert not bad, (arch, bad)


def test_schemes_follow_the_libraries():
    from statex_dist.models.init import fresh_weights
    gla = config_from_dict({"arch": "gla", "vocab_size": 500, "hidden_size": 256, "num_layers": 2, "num_heads": 4,
                            "use_short_conv": True})
    get = fresh_weights(gla, 0)
    for name in ("embeddings.weight", "lm_head.weight", "layers.0.attn.q_proj.weight", "layers.1.mlp.down_proj.weight",
                 "layers.0.attn.q_conv1d.weight"):
        assert abs(get(name).std().item() - 0.02) < 0.002, name            # fla: N(0, 0.02)
    assert not get("layers.0.attn.gk_proj.1.bias").any() and get("layers.0.attn_norm.weight").eq(1).all()

    m = config_from_dict({"arch": "mamba2", "vocab_size": 500, "hidden_size": 256, "num_layers": 4, "d_state": 16,
                          "headdim": 8, "tie_word_embeddings": False})   # 64 heads
    get = fresh_weights(m, 0)
    A = torch.exp(get("layers.0.mixer.A_log"))
    assert A.min() >= 1 and A.max() <= 16 and A.max() - A.min() > 10     # U(1, 16)
    dt = torch.nn.functional.softplus(get("layers.0.mixer.dt_bias"))
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 0.1 * (1 + 1e-5)  # log-uniform in [dt_min, dt_max]
    assert (torch.log(dt).mean() - math.log(1e-2)).abs() < 0.4             # centred in log space
    bound = {"in_proj.weight": 1 / 16, "out_proj.weight": 1 / math.sqrt(512) / 2, "conv1d.weight": 0.5,
             "conv1d.bias": 0.5}                                           # 1/sqrt(fan-in); out_proj / sqrt(4 layers)
    for k, b in bound.items():
        w = get(f"layers.1.mixer.{k}")
        assert w.abs().max() <= b and w.abs().max() > 0.95 * b, k
    assert abs(get("lm_head.weight").abs().max().item() - 1 / 16) < 1e-3 and get("layers.0.mixer.D").eq(1).all()
