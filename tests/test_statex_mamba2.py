"""Mamba2 ``zero`` and ``preserve`` expansions compute what the original did (transformers' Mamba2 and our
model agree); ``preserve`` trains where ``zero`` sits on a saddle point."""
import pytest
import torch
from transformers import Mamba2Config as HFMamba2Config
from transformers import Mamba2ForCausalLM as HFMamba2

from statex_dist.archs.mamba2.transformers_format import TransformersMamba2
from statex_dist.models import build_model
from statex_dist.statex import ExpansionPlan, choose_layers, expand_config, expand_tensor
from tests.conftest import rel_err
from tests.test_model_mamba2 import make_hf_mamba2

HF_TOL, OURS_TOL = 1e-6, 1e-5


def internal(hf_name: str) -> str:
    if hf_name == "lm_head.weight":
        return hf_name
    return hf_name.removeprefix("backbone.").replace("embeddings.", "embedding.")


def hf_name(name: str) -> str:
    if name == "lm_head.weight":
        return name
    return "backbone." + name.replace("embedding.", "embeddings.")


def expand_hf(ref, plan):
    """(old config, new config, expanded internal tensors) of a transformers Mamba2 model."""
    old = TransformersMamba2.read_config(ref.config.to_dict())
    new = expand_config(old, plan)
    weights = {internal(n): t for n, t in ref.state_dict().items()}
    return old, new, {n: expand_tensor(n, t, old, new, plan) for n, t in weights.items()}


def ours(config, weights):
    model = build_model(config, init=False)
    missing = {n for n, _ in model.named_parameters()} - set(weights)
    assert not missing
    model.load_state_dict({n: weights[n] for n, _ in model.named_parameters()}, strict=True)
    return model.eval()


@pytest.mark.parametrize("init", ["zero", "preserve"])
@pytest.mark.parametrize("ngroups", [1, 2])
def test_function_preserving_expansion_of_every_layer(tmp_path, ngroups, init):
    ref = make_hf_mamba2(tmp_path, n_groups=ngroups, num_hidden_layers=2)
    plan = ExpansionPlan(choose_layers(2, every=1), d_state=40, init=init)
    old, new, weights = expand_hf(ref, plan)
    assert new.d_state == [40, 40]
    big = HFMamba2(HFMamba2Config(**{**ref.config.to_dict(), "state_size": 40})).float().eval()
    big.load_state_dict({hf_name(n): t for n, t in weights.items()}, strict=True)
    ids = torch.randint(0, 101, (2, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(ids).logits
        assert rel_err(big(ids).logits, want) <= HF_TOL
        assert rel_err(ours(new, weights)(ids), want) <= OURS_TOL


@pytest.mark.parametrize("init", ["zero", "preserve"])
@pytest.mark.parametrize("ngroups", [1, 2])
def test_function_preserving_expansion_of_some_layers(tmp_path, ngroups, init):
    ref = make_hf_mamba2(tmp_path, n_groups=ngroups, num_hidden_layers=3)
    plan = ExpansionPlan([0, 2], d_state=32, init=init)
    old, new, weights = expand_hf(ref, plan)
    assert new.d_state == [32, 16, 32] and new.expanded_layers == [0, 2]
    ids = torch.randint(0, 101, (2, 19), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert rel_err(ours(new, weights)(ids), ref(ids).logits) <= OURS_TOL


@pytest.mark.parametrize("init", ["reinit", "copy"])
def test_other_inits_build_and_change_only_the_chosen_layers(tmp_path, init):
    ref = make_hf_mamba2(tmp_path, n_groups=2, num_hidden_layers=2)
    plan = ExpansionPlan([1], d_state=24, init=init)
    old, new, weights = expand_hf(ref, plan)
    model = ours(new, weights)
    ids = torch.randint(0, 101, (1, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(ids)
        assert torch.isfinite(out).all() and rel_err(out, ref(ids).logits) > 1e-4


@pytest.mark.parametrize("ngroups", [1, 2])
def test_preserve_trains_where_zero_is_a_saddle(tmp_path, ngroups):
    # after one backward pass the new C channels' conv taps have a gradient under preserve (B_new is drawn,
    # so the new state rows are non-zero) and exactly none under zero (B_new = C_new = 0: each one's
    # gradient is proportional to the other)
    ref = make_hf_mamba2(tmp_path, n_groups=ngroups, num_hidden_layers=2)
    ids = torch.randint(0, 101, (2, 17), generator=torch.Generator().manual_seed(4))
    norms = {}
    for init in ("zero", "preserve"):
        old, new, weights = expand_hf(ref, ExpansionPlan([0], d_state=32, init=init))
        model = ours(new, weights).train()
        model(ids, labels=ids).backward()
        E, G, N, N2 = old.d_inner, old.ngroups, old.d_state[0], new.d_state[0]
        conv = dict(model.named_parameters())["layers.0.mixer.conv1d.weight"]
        c_new = torch.cat([conv.grad[E + G * N2 + g * N2 + N:E + G * N2 + (g + 1) * N2] for g in range(G)])
        assert c_new.shape[0] == G * (N2 - N)
        norms[init] = c_new.abs().max().item()
        assert conv.grad[:E].abs().max() > 0  # the x channels train in both
    assert norms["zero"] == 0.0
    assert norms["preserve"] > 1e-6, norms
