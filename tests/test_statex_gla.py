"""GLA ``merge``: our model with the merged heads equals fla's own GLA built with H' heads from the same
weights (and the tiled output-norm weight); a partial merge equals fla with those layers swapped."""
import pytest
import torch

from statex_dist.archs.gla.fla_format import FlaGLA
from statex_dist.models import build_model
from statex_dist.statex import ExpansionPlan, expand_config, expand_tensor
from tests.conftest import rel_err
from tests.fla_reference import fla_logits, make_fla_gla

TOL = 1e-5


def make_ref(folder, **kw):
    """A random fla GLA whose attention matters: fla's small init leaves the residual stream almost
    untouched by it, which would let a wrong head layout pass unnoticed."""
    ref = make_fla_gla(folder, **kw)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")):
                p.mul_(4.0)
    return ref


def internal(fla_name: str) -> str:
    return fla_name.removeprefix("model.").replace("g_norm_swish_gate.", "g_norm.")


def expand_fla(ref, plan):
    """(old config, new config, expanded internal tensors) of an fla GLA model."""
    old = FlaGLA.read_config(ref.config.to_dict())
    new = expand_config(old, plan)
    weights = {internal(n): t for n, t in ref.state_dict().items()}
    if old.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    return old, new, {n: expand_tensor(n, t, old, new, plan) for n, t in weights.items()}


def ours(config, weights):
    model = build_model(config, init=False)
    model.load_state_dict({n: weights[n] for n, _ in model.named_parameters()}, strict=True)
    return model.eval()


def fla_model(ref, heads_per_layer, weights):
    """fla's GLAForCausalLM with ``heads_per_layer`` (fla builds uniform heads: layers are swapped in)."""
    from fla.models import GLAConfig, GLAForCausalLM
    base = ref.config.to_dict()
    model = GLAForCausalLM(GLAConfig.from_dict({**base, "num_heads": base["num_heads"]})).float()
    for h in set(heads_per_layer) - {base["num_heads"]}:
        other = GLAForCausalLM(GLAConfig.from_dict({**base, "num_heads": h})).float()
        for i, hi in enumerate(heads_per_layer):
            if hi == h:
                model.model.layers[i].attn = other.model.layers[i].attn
    sd = {}
    for n in model.state_dict():
        key = "embeddings.weight" if n == "lm_head.weight" and "lm_head.weight" not in weights else internal(n)
        sd[n] = weights[key]
    model.load_state_dict(sd, strict=True)
    return model.eval()


@pytest.mark.parametrize("target,tied,short_conv", [(1, False, False), (2, False, True), (1, True, True)])
def test_merge_all_layers_equals_fla_with_fewer_heads(tmp_path, target, tied, short_conv):
    ref = make_ref(tmp_path, num_heads=4, tie_word_embeddings=tied, use_short_conv=short_conv)
    plan = ExpansionPlan([0, 1], gla_heads=target, init="merge")
    old, new, weights = expand_fla(ref, plan)
    assert new.num_heads == [target, target]
    ids = torch.randint(0, 101, (2, 33), generator=torch.Generator().manual_seed(1))
    want = fla_logits(fla_model(ref, new.num_heads, weights), ids)
    with torch.no_grad():
        got = ours(new, weights)(ids)
    assert rel_err(got, want) <= TOL
    assert rel_err(got, fla_logits(ref, ids)) > 1e-2  # merging heads does change the function


@pytest.mark.parametrize("layers,target", [([0], 1), ([1, 2], 2)])
def test_merge_some_layers_equals_fla_with_those_layers_merged(tmp_path, layers, target):
    ref = make_ref(tmp_path, num_heads=4, num_hidden_layers=3)
    plan = ExpansionPlan(layers, gla_heads=target, init="merge")
    old, new, weights = expand_fla(ref, plan)
    assert new.num_heads == [target if i in layers else 4 for i in range(3)]
    for n, t in ref.state_dict().items():  # un-expanded layers and shared tensors: the very same tensors
        if not any(internal(n).startswith(f"layers.{i}.") for i in layers) and internal(n) in weights:
            assert torch.equal(weights[internal(n)], t)
    ids = torch.randint(0, 101, (2, 25), generator=torch.Generator().manual_seed(2))
    want = fla_logits(fla_model(ref, new.num_heads, weights), ids)
    with torch.no_grad():
        assert rel_err(ours(new, weights)(ids), want) <= TOL


def test_reinit_runs_and_equals_fla_with_the_same_weights(tmp_path):
    ref = make_ref(tmp_path, num_heads=4, num_hidden_layers=2, use_short_conv=True)
    plan = ExpansionPlan([1], gla_heads=1, init="reinit", gate_bias_init=(1.0, 4.0), seed=3)
    old, new, weights = expand_fla(ref, plan)
    ids = torch.randint(0, 101, (1, 17), generator=torch.Generator().manual_seed(3))
    want = fla_logits(fla_model(ref, new.num_heads, weights), ids)
    with torch.no_grad():
        got = ours(new, weights)(ids)
    assert torch.isfinite(got).all() and rel_err(got, want) <= TOL
