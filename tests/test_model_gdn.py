"""load_model on fla Gated DeltaNet folders gives fla's own logits (fp32, max relative error <= 1e-5); bad
config.json refused in one line."""
import json

import pytest
import torch

from statex_dist import load_model
from statex_dist.checkpoint.errors import CheckpointError
from statex_dist.models import specs_for
from tests.conftest import rel_err
from tests.fla_reference import fla_logits, make_fla_gdn

TOL = 1e-5


@pytest.mark.parametrize("heads,v_heads,use_gate,short_conv,tied", [
    (2, 4, True, True, False),     # grouped value attention, fla's defaults otherwise
    (2, 4, False, False, True),
    (2, None, True, False, False),
    (1, 2, False, True, False),
    (4, 4, True, True, True),
])
def test_logits_match_fla(tmp_path, heads, v_heads, use_gate, short_conv, tied):
    ref = make_fla_gdn(tmp_path, num_heads=heads, num_v_heads=v_heads, head_dim=32 // heads,
                       use_gate=use_gate, use_short_conv=short_conv, tie_word_embeddings=tied)
    ids = torch.randint(0, ref.config.vocab_size, (2, 37), generator=torch.Generator().manual_seed(1))
    model = load_model(tmp_path)
    with torch.no_grad():
        ours = model(ids)
    want = fla_logits(ref, ids)
    assert ours.shape == (2, 37, ref.config.vocab_size)
    assert rel_err(ours, want) <= TOL


def test_config_and_params_match_specs(tmp_path):
    make_fla_gdn(tmp_path, num_heads=2, num_v_heads=4, expand_v=2.0)
    model = load_model(tmp_path)
    c = model.config
    assert (c.num_heads, c.num_v_heads, c.key_dim, c.value_dim) == ([2, 2], [4, 4], 32, 128)
    assert c.state_size(0) == 4 * 16 * 32
    specs = specs_for(c, 1)
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == {n: s.shape for n, s in specs.items()}
    assert all(p.shard_spec == specs[n] for n, p in model.named_parameters())


@pytest.mark.parametrize("key,value,msg", [
    ("allow_neg_eigval", True, "config.json: allow_neg_eigval=True is not supported (needs False)"),
    ("attn", {"layers": [1], "num_heads": 2}, "config.json: attn={'layers': [1], 'num_heads': 2} is not supported"),
    ("hidden_act", "gelu", "config.json: hidden_act='gelu' is not supported (needs 'swish')"),
    ("attnres_block_size", 2, "config.json: attnres_block_size=2 is not supported (needs None)"),
    ("use_l2warp", True, "config.json: use_l2warp=True is not supported (needs False)"),
    ("output_gate_activation", "sigmoid",
     "config.json: output_gate_activation='sigmoid' is not supported (needs one of ['swish', 'silu'])"),
    ("num_v_heads", 3, "layer 0: 3 value heads must be a multiple of its 2 heads"),
])
def test_bad_config_refused_in_one_line(tmp_path, key, value, msg):
    make_fla_gdn(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[key] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises((CheckpointError, ValueError)) as e:
        load_model(tmp_path)
    assert msg in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("heads,v_heads", [([2, 2], [2, 2]), ([1, 2], [1, 2])])
def test_config_json_round_trip_with_odd_widths(heads, v_heads):
    """Key heads of 7 and value heads of 61 (a merged layer: 14 x 122): config.json's head_dim and expand_v
    give fla's layer exactly these widths (int(head_dim * expand_v) channels), and read back the same config."""
    from fla.layers.gated_deltanet import GatedDeltaNet

    from statex_dist.archs.gdn.config import GDNConfig
    from statex_dist.archs.gdn.fla_format import FlaGatedDeltaNet
    cfg = GDNConfig(vocab_size=50, hidden_size=32, num_layers=2, num_heads=heads, num_v_heads=v_heads, key_dim=14,
                    value_dim=122)
    written = FlaGatedDeltaNet.write_config(cfg)
    assert FlaGatedDeltaNet.read_config(json.loads(json.dumps(written))) == cfg
    layer = GatedDeltaNet(hidden_size=32, head_dim=written["head_dim"], expand_v=written["expand_v"],
                          num_heads=written["num_heads"], num_v_heads=written["num_v_heads"])
    assert (layer.key_dim, layer.value_dim) == (14, 122)
