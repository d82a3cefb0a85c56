"""Sizes that cannot work fail before any process group is created, naming the constraint and what works."""
import pytest

from statex_dist.models.validate import check_parallel_sizes
from tests.parallel_cases import CASES


def test_mamba2_heads_not_divisible():
    with pytest.raises(ValueError, match=r"TP=3: Mamba2 has 8 heads .* \[1, 2, 4, 8\]"):
        check_parallel_sizes(CASES["mamba2-g1"], tp=3)


def test_mamba2_groups_and_tp():
    from statex_dist.archs.mamba2.config import Mamba2Config
    cfg = Mamba2Config(vocab_size=10, hidden_size=96, num_layers=2, d_state=8, headdim=16, ngroups=3)
    with pytest.raises(ValueError, match=r"ngroups 3 and TP must divide one another; TP sizes that work: \[1, 3, 6, 12\]"):
        check_parallel_sizes(cfg, tp=2)


def test_gla_value_width_not_divisible():
    from statex_dist.archs.gla.config import GLAConfig
    cfg = GLAConfig(vocab_size=10, hidden_size=48, num_layers=1, num_heads=[1], expand_k=1.0)
    with pytest.raises(ValueError, match=r"TP=5: layers.0.attn.v_proj.weight has a block of width 48 along dim 0 "
                                         r"that TP splits and does not divide; TP sizes that work for this model: "
                                         r"\[1, 2, 4, 8, 16\]"):
        check_parallel_sizes(cfg, tp=5)


def test_rules_are_the_layouts():
    """The check reads the ShardSpecs: a value-sharded 1-head GLA layer replicates q and k, so a key dim
    that TP does not divide is fine there; Mamba2's B/C channels (ngroups x d_state) split over TP, so a
    d_state that TP does not divide is refused, naming the tensor."""
    from statex_dist.archs.gla.config import GLAConfig
    from statex_dist.archs.mamba2.config import Mamba2Config
    check_parallel_sizes(GLAConfig(vocab_size=10, hidden_size=32, num_layers=1, num_heads=[1], expand_k=0.375,
                                   intermediate_size=64), tp=4)        # key dim 12: replicated
    cfg = Mamba2Config(vocab_size=10, hidden_size=64, num_layers=2, d_state=[8, 12], headdim=16, ngroups=1)
    with pytest.raises(ValueError, match=r"TP=8: layers.1.mixer.in_proj.weight has a block of width 12 .* "
                                         r"\[1, 2, 4\]"):
        check_parallel_sizes(cfg, tp=8)


def test_pp_larger_than_layers():
    with pytest.raises(ValueError, match=r"PP=5 is larger than the 4 layers; PP must be <= 4"):
        check_parallel_sizes(CASES["gla-mixed"], tp=1, pp=5)


def test_world_not_a_product():
    with pytest.raises(ValueError, match=r"world size 6 is not a multiple of TP x PP = 4 x 1"):
        check_parallel_sizes(CASES["gla-mixed"], tp=4, pp=1, world=6)


def test_valid_layouts_pass():
    check_parallel_sizes(CASES["gla-mixed"], tp=2, pp=2, world=8)
    check_parallel_sizes(CASES["mamba2-g1"], tp=4, pp=2, world=8)
