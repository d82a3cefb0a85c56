"""StateX layer choice, plan validation and expand_config (configs only, no tensors)."""
import pytest

from statex_dist.archs.gdn.config import GDNConfig
from statex_dist.archs.gla.config import GLAConfig
from statex_dist.archs.mamba2.config import Mamba2Config
from statex_dist.statex import ExpansionPlan, choose_layers, expand_config


def gla(layers=4, heads=4):
    return GLAConfig(vocab_size=101, hidden_size=64, num_layers=layers, num_heads=heads)


def mamba2(layers=4, d_state=16, ngroups=1):
    return Mamba2Config(vocab_size=101, hidden_size=64, num_layers=layers, d_state=d_state, headdim=16,
                        ngroups=ngroups)


def gdn(layers=4, heads=2, v_heads=4):
    return GDNConfig(vocab_size=101, hidden_size=64, num_layers=layers, num_heads=heads, num_v_heads=v_heads,
                     key_dim=32, value_dim=64)


def test_choose_layers_every():
    assert choose_layers(24) == [0, 6, 12, 18]
    assert choose_layers(24, every=4) == [0, 4, 8, 12, 16, 20]
    assert choose_layers(5, every=1) == [0, 1, 2, 3, 4]
    assert choose_layers(4, every=4) == [0]


@pytest.mark.parametrize("n,every", [(24, 5), (4, 6), (10, 0), (10, -2), (12, 24)])
def test_choose_layers_every_must_divide(n, every):
    with pytest.raises(ValueError, match=r"does not divide .*sizes that work: \[") as e:
        choose_layers(n, every=every)
    if n == 24:
        assert "[1, 2, 3, 4, 6, 8, 12, 24]" in str(e.value)


def test_choose_layers_default_on_a_small_model_names_valid_sizes():
    with pytest.raises(ValueError, match=r"every=6 does not divide 4 layers; sizes that work: \[1, 2, 4\]"):
        choose_layers(4)


def test_choose_layers_explicit():
    assert choose_layers(8, layers=[5, 0, 3]) == [0, 3, 5]
    with pytest.raises(ValueError, match=r"out of range: the model has layers 0\.\.7"):
        choose_layers(8, layers=[0, 8])
    with pytest.raises(ValueError, match="out of range"):
        choose_layers(8, layers=[-1])
    with pytest.raises(ValueError, match=r"layers \[2\] are listed more than once"):
        choose_layers(8, layers=[2, 4, 2])
    with pytest.raises(ValueError, match="empty"):
        choose_layers(8, layers=[])
    with pytest.raises(ValueError, match="not both"):
        choose_layers(8, every=2, layers=[0])


def test_expand_config_gla():
    old = gla(4, heads=[4, 4, 2, 4])
    new = expand_config(old, ExpansionPlan([0, 2], gla_heads=1, init="merge"))
    assert new.num_heads == [1, 4, 1, 4] and new.expanded_layers == [0, 2]
    assert old.num_heads == [4, 4, 2, 4] and old.expanded_layers == []  # the input is left alone
    again = expand_config(new, ExpansionPlan([1], gla_heads=2))
    assert again.num_heads == [1, 2, 1, 4] and again.expanded_layers == [0, 1, 2]
    assert [new.state_size(i) for i in range(4)] == [32 * 64, 32 * 64 // 4, 32 * 64, 32 * 64 // 4]


def test_expand_config_gdn():
    """Merged layers get one value head per key head: H' of each."""
    old = gdn(4, heads=[4, 4, 2, 4], v_heads=[8, 8, 4, 8])
    new = expand_config(old, ExpansionPlan([0, 2], heads=1, init="merge"))
    assert new.num_heads == [1, 4, 1, 4] and new.num_v_heads == [1, 8, 1, 8] and new.expanded_layers == [0, 2]
    assert old.num_heads == [4, 4, 2, 4] and old.num_v_heads == [8, 8, 4, 8]
    again = expand_config(new, ExpansionPlan([1], gla_heads=2))   # the earlier keyword still works
    assert again.num_heads == [1, 2, 1, 4] and again.num_v_heads == [1, 2, 1, 8]
    # K x V = 32 x 64 in every layer; 8 value heads of 8 x 8, 2 of 16 x 32, 1 of 32 x 64
    assert [again.state_size(i) for i in range(4)] == [2048, 1024, 2048, 512]
    assert ExpansionPlan.for_model(old, layers=[1]).heads == 1
    assert ExpansionPlan.for_model(old, layers=[1], gla_heads=2).heads == 2


def test_gdn_heads_checked():
    msg = r"layer 2 has 2 heads: heads=2 must divide 2 and be smaller; valid values: \[1\]"
    with pytest.raises(ValueError, match=msg):
        expand_config(gdn(4, [4, 4, 2, 4], [8, 8, 4, 8]), ExpansionPlan([0, 2], heads=2))
    with pytest.raises(ValueError, match="d_state applies to Mamba2 models; a Gated DeltaNet expansion sets heads"):
        expand_config(gdn(), ExpansionPlan([0], d_state=32))
    with pytest.raises(ValueError, match="gate_bias_init applies to GLA models only"):
        expand_config(gdn(), ExpansionPlan([0], gate_bias_init=(0.0, 1.0)))
    with pytest.raises(ValueError, match=r"init='zero' is not a gdn mode; gdn supports \['reinit', 'merge'\]"):
        expand_config(gdn(), ExpansionPlan([0], init="zero"))


def test_expand_config_mamba2():
    old = mamba2(4, d_state=16)
    new = expand_config(old, ExpansionPlan([0, 3], d_state=48, init="zero"))
    assert new.d_state == [48, 16, 16, 48] and new.expanded_layers == [0, 3]
    assert old.d_state == [16] * 4


@pytest.mark.parametrize("heads,target,msg", [
    (4, 3, r"layer 0 has 4 heads: heads=3 must divide 4 and be smaller; valid values: \[1, 2\]"),
    (4, 4, r"layer 0 has 4 heads: heads=4 .*valid values: \[1, 2\]"),
    (4, 0, r"heads=0"),
    (1, 1, r"layer 0 has 1 heads: .*cannot merge further"),
])
def test_gla_heads_must_divide(heads, target, msg):
    with pytest.raises(ValueError, match=msg):
        expand_config(gla(4, heads), ExpansionPlan([0, 2], gla_heads=target))


def test_gla_heads_error_names_the_offending_layer():
    with pytest.raises(ValueError, match=r"layer 2 has 2 heads: heads=4"):
        expand_config(gla(4, [8, 8, 2, 8]), ExpansionPlan([0, 2], gla_heads=4))


@pytest.mark.parametrize("target", [16, 12])
def test_d_state_must_grow(target):
    with pytest.raises(ValueError, match=rf"layer 1 has d_state 16: the target d_state {target} must be > 16"):
        expand_config(mamba2(4, [8, 16, 16, 16]), ExpansionPlan([0, 1], d_state=target))


def test_d_state_required_for_mamba2_and_refused_for_gla():
    with pytest.raises(ValueError, match="needs d_state"):
        expand_config(mamba2(), ExpansionPlan([0]))
    with pytest.raises(ValueError, match="d_state applies to Mamba2"):
        expand_config(gla(), ExpansionPlan([0], d_state=32))


@pytest.mark.parametrize("cfg,init", [(gla, "copy"), (gla, "zero"), (mamba2, "merge")])
def test_init_must_suit_the_arch(cfg, init):
    kw = {"d_state": 32} if cfg is mamba2 else {}
    with pytest.raises(ValueError, match=rf"init='{init}' is not a .* mode; .* supports \["):
        expand_config(cfg(), ExpansionPlan([0], init=init, **kw))


def test_unknown_init_and_bad_options():
    known = r"\['copy', 'merge', 'preserve', 'reinit', 'zero'\]"
    with pytest.raises(ValueError, match=rf"init='random' is unknown; expected one of {known}"):
        ExpansionPlan([0], init="random")
    with pytest.raises(ValueError, match="lo <= hi"):
        ExpansionPlan([0], gate_bias_init=(1.0, -1.0))
    with pytest.raises(ValueError, match="init='reinit' only"):
        expand_config(gla(), ExpansionPlan([0], init="merge", gate_bias_init=(0.0, 1.0)))
    with pytest.raises(ValueError, match="GLA models only"):
        expand_config(mamba2(), ExpansionPlan([0], d_state=32, gate_bias_init=(0.0, 1.0)))


def test_plan_layers_are_validated_against_the_model():
    with pytest.raises(ValueError, match=r"layers \[4\] are out of range"):
        expand_config(gla(4), ExpansionPlan([0, 4]))


@pytest.mark.parametrize("key", ["heads", "gla_heads"])
def test_run_config_heads_and_its_earlier_name(key):
    """The run config's expansion.heads sizes GLA and Gated DeltaNet layers; expansion.gla_heads still does."""
    from statex_dist.run_config import load_run_config
    from statex_dist.training.initial_weights import expansion_plan
    run = load_run_config(None, ["expansion.enabled=true", "expansion.layers=[0]", f"expansion.{key}=2"])
    assert expansion_plan(run, gla(4, 4)).heads == 2
    assert expansion_plan(run, gdn(4, 4, 8)).heads == 2
