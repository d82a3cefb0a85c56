"""Parameter and recurrent-state counts from configs (shapes only, no model is built)."""
import math

from statex_dist.archs.gla.config import GLAConfig
from statex_dist.archs.mamba2.config import Mamba2Config
from statex_dist.models import specs_for
from statex_dist.statex import ExpansionPlan, choose_layers, count_params, expand_config, state_floats, summary


def gla_13b():
    return GLAConfig(vocab_size=32000, hidden_size=2048, num_layers=24, num_heads=4, expand_k=0.5, expand_v=1.0)


def mamba2_13b():
    return Mamba2Config(vocab_size=50277, hidden_size=2048, num_layers=48, d_state=128, headdim=64, expand=2,
                        ngroups=1, d_conv=4, pad_vocab_multiple=16, tie_word_embeddings=True)


def test_gla_13b_state_with_every_sixth_layer_merged():
    old = gla_13b()
    new = expand_config(old, ExpansionPlan(choose_layers(24, every=6), gla_heads=1, init="merge"))
    assert new.num_heads == [1, 4, 4, 4, 4, 4] * 4
    assert old.state_size(0) == 4 * 256 * 512 == 524_288 and new.state_size(0) == 1024 * 2048
    assert state_floats(old) == 12_582_912  # 24 x 524,288 = exactly 12 Mi floats
    assert state_floats(new) == 18_874_368  # 20 x 524,288 + 4 x 2,097,152 = exactly 18 Mi floats
    # The paper's 12.48M -> 18.72M: each layer's 524,288 rounded down to 0.52M (and 2,097,152 to 4 x 0.52M)
    # before summing; the ratio, x1.5, is the same.
    assert math.isclose(24 * 0.52, 12.48) and math.isclose(20 * 0.52 + 4 * 4 * 0.52, 18.72)
    assert state_floats(new) / state_floats(old) == 1.5 and math.isclose(18.72 / 12.48, 1.5)
    # merging only widens the output norm weight of the 4 layers: 512 -> 2048
    assert count_params(new) - count_params(old) == 4 * (2048 - 512)


def test_gla_13b_param_count():
    c = gla_13b()
    D, V, K, I = 2048, 2048, 1024, c.intermediate_size
    assert I == 5632
    layer = (2 * K * D + 2 * V * D + 16 * D + K * 16 + K + V * D + V // 4) + 2 * D + 3 * I * D
    assert count_params(c) == 24 * layer + 2 * 32000 * D + D
    assert count_params(c) == 1_365_514_240


def test_mamba2_13b_extra_params_per_layer():
    old = mamba2_13b()
    new = expand_config(old, ExpansionPlan(choose_layers(48, every=6), d_state=512))
    per_layer = 2 * 1 * (512 - 128) * (2048 + 4 + 1)  # STATEX.md: 2G(N'-N)(d_model + d_conv + 1)
    assert count_params(new) - count_params(old) == 8 * per_layer
    assert 0.0011 < per_layer / count_params(old) < 0.0013  # "about 0.12% ... per expanded layer"
    assert state_floats(old) == 48 * 4096 * 128 and state_floats(new) == 40 * 4096 * 128 + 8 * 4096 * 512


def test_count_params_counts_a_tied_embedding_once():
    tied = Mamba2Config(vocab_size=101, hidden_size=64, num_layers=2, d_state=16, headdim=16,
                        tie_word_embeddings=True, pad_vocab_multiple=16)
    untied = Mamba2Config(vocab_size=101, hidden_size=64, num_layers=2, d_state=16, headdim=16,
                          pad_vocab_multiple=16)
    assert count_params(untied) - count_params(tied) == 112 * 64
    assert count_params(tied) == sum(math.prod(s.shape) for s in specs_for(tied, 1).values())


def test_summary_line():
    old = gla_13b()
    new = expand_config(old, ExpansionPlan([0, 6, 12, 18], init="merge"))
    line = summary(old, new)
    assert "\n" not in line
    assert "1,365,514,240 -> 1,365,520,384" in line and "+6,144" in line
    assert "12,582,912 -> 18,874,368" in line and "x1.50" in line and "[0, 6, 12, 18]" in line
