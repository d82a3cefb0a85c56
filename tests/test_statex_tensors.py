"""expand_tensor on random tensors: shapes, reset values, untouched tensors, init bounds, determinism."""
import math

import pytest
import torch

from statex_dist.archs.gdn.config import GDNConfig
from statex_dist.archs.gla.config import GLAConfig
from statex_dist.archs.mamba2.config import Mamba2Config
from statex_dist.models import specs_for
from statex_dist.statex import ExpansionPlan, expand_config, expand_tensor, expand_tensors

GAIN = 2 ** -2.5


def random_weights(config, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s.shape, generator=g).to(dtype) for n, s in specs_for(config, 1).items()}


def expand_all(weights, old, new, plan, order=None):
    names = order or list(weights)
    return dict(expand_tensors(((n, weights[n]) for n in names), old, new, plan))


def gla_cfg(**kw):
    base = dict(vocab_size=101, hidden_size=128, num_layers=4, num_heads=4, use_short_conv=True, conv_size=4)
    base.update(kw)
    return GLAConfig(**base)


def mamba2_cfg(**kw):
    base = dict(vocab_size=101, hidden_size=64, num_layers=3, d_state=16, headdim=16, ngroups=2, d_conv=4)
    base.update(kw)
    return Mamba2Config(**base)


def gdn_cfg(**kw):
    base = dict(vocab_size=101, hidden_size=64, num_layers=4, num_heads=4, num_v_heads=8, key_dim=64,
                value_dim=128, use_short_conv=True, conv_size=4)
    base.update(kw)
    return GDNConfig(**base)


def check_shapes(out, new):
    assert {n: tuple(t.shape) for n, t in out.items()} == {n: s.shape for n, s in specs_for(new, 1).items()}


def check_untouched(out, weights, layers):
    for n, t in weights.items():
        if not any(n.startswith(f"layers.{i}.") for i in layers):
            assert out[n] is t, n


# --- GLA ---------------------------------------------------------------------------------------------

def test_gla_reinit():
    old = gla_cfg()
    plan = ExpansionPlan([0, 2], gla_heads=1, init="reinit")
    new = expand_config(old, plan)
    w = random_weights(old)
    out = expand_all(w, old, new, plan)
    check_shapes(out, new)
    check_untouched(out, w, plan.layers)
    for i in plan.layers:
        p = f"layers.{i}."
        for k in ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight", "mlp_norm.weight"):
            assert out[p + k] is w[p + k]
        assert torch.equal(out[p + "attn_norm.weight"], torch.ones(128))
        assert torch.equal(out[p + "attn.g_norm.weight"], torch.ones(128))  # value dim 128, one head
        assert torch.equal(out[p + "attn.gk_proj.1.bias"], torch.zeros(64))
        for k in ("q_proj", "k_proj", "v_proj", "g_proj", "o_proj", "gk_proj.0", "gk_proj.1"):
            t = out[p + f"attn.{k}.weight"]
            bound = GAIN * math.sqrt(6 / sum(t.shape))
            assert t.abs().max() <= bound and t.abs().max() > 0.9 * bound, k
            assert abs(t.std().item() - bound / math.sqrt(3)) < 0.15 * bound / math.sqrt(3), k
            assert not torch.equal(t, w[p + f"attn.{k}.weight"])
        for k in ("q", "k", "v"):
            t = out[p + f"attn.{k}_conv1d.weight"]
            assert t.abs().max() <= 0.5 and t.abs().max() > 0.45  # nn.Conv1d default: 1 / sqrt(W = 4)


def test_gla_reinit_gate_bias_range():
    old = gla_cfg(use_short_conv=False)
    plan = ExpansionPlan([1], gla_heads=2, gate_bias_init=(1.0, 4.0))
    new = expand_config(old, plan)
    b = expand_tensor("layers.1.attn.gk_proj.1.bias", torch.zeros(64), old, new, plan)
    assert b.min() >= 1.0 and b.max() <= 4.0 and b.std() > 0.5
    assert torch.equal(expand_tensor("layers.1.attn.g_norm.weight", torch.zeros(32), old, new, plan),
                       torch.ones(64))


@pytest.mark.parametrize("heads,target", [(4, 1), (4, 2), (8, 2)])
def test_gla_merge_keeps_weights_and_tiles_the_norm(heads, target):
    old = gla_cfg(num_heads=heads)
    plan = ExpansionPlan([1, 3], gla_heads=target, init="merge")
    new = expand_config(old, plan)
    w = random_weights(old)
    out = expand_all(w, old, new, plan)
    check_shapes(out, new)
    for n, t in w.items():
        if n.endswith("g_norm.weight") and n.startswith(("layers.1.", "layers.3.")):
            assert torch.equal(out[n], t.repeat(heads // target))
        else:
            assert out[n] is t, n


# --- Gated DeltaNet ----------------------------------------------------------------------------------

GDN_PER_HEAD = ("attn.a_proj.weight", "attn.b_proj.weight", "attn.A_log", "attn.dt_bias")
GDN_KEPT = ("q_proj", "k_proj", "v_proj", "g_proj", "o_proj", "q_conv1d", "k_conv1d", "v_conv1d")


def expanded(old, plan):
    """(new config, random source weights, their expansion), the shapes and the other layers checked."""
    new = expand_config(old, plan)
    w = random_weights(old)
    out = expand_all(w, old, new, plan)
    check_shapes(out, new)
    check_untouched(out, w, plan.layers)
    return new, w, out


def test_gdn_reinit():
    plan = ExpansionPlan([0, 2], heads=1, init="reinit", seed=3)
    _, w, out = expanded(gdn_cfg(), plan)
    for i in plan.layers:
        p = f"layers.{i}."
        for k in ("mlp.up_proj.weight", "mlp.down_proj.weight", "mlp_norm.weight"):
            assert out[p + k] is w[p + k]
        assert torch.equal(out[p + "attn_norm.weight"], torch.ones(64))
        assert torch.equal(out[p + "attn.o_norm.weight"], torch.ones(128))   # one value head of 128
        for k in GDN_KEPT:   # fla's _init_weights: N(0, 0.02) on every Linear and Conv1d
            t = out[p + f"attn.{k}.weight"]
            assert abs(t.std().item() - 0.02) < 0.002 and not torch.equal(t, w[p + f"attn.{k}.weight"]), k
        assert out[p + "attn.a_proj.weight"].shape == (1, 64) and out[p + "attn.A_log"].shape == (1,)
        assert out[p + "attn.A_log"].item() <= math.log(16)                  # A ~ U(0, 16)
        dt = torch.nn.functional.softplus(out[p + "attn.dt_bias"])           # dt in [1e-3, 0.1]
        assert 1e-3 * 0.999 <= dt.item() <= 0.1 * 1.001


@pytest.mark.parametrize("heads,v_heads,target", [(4, 8, 1), (4, 8, 2), (2, 2, 1)])
def test_gdn_merge_keeps_projections_and_averages_each_merged_heads_gates(heads, v_heads, target):
    plan = ExpansionPlan([1, 3], heads=target, init="merge")
    new, w, out = expanded(gdn_cfg(num_heads=heads, num_v_heads=v_heads), plan)
    assert new.num_heads[1] == new.num_v_heads[1] == target
    r = v_heads // target   # old value heads per merged head
    for i in plan.layers:
        p = f"layers.{i}."
        for k in GDN_PER_HEAD:
            t = w[p + k]
            want = torch.stack([t[j * r:(j + 1) * r].mean(0) for j in range(target)])
            assert torch.allclose(out[p + k], want, rtol=0, atol=1e-6), k
        assert torch.equal(out[p + "attn.o_norm.weight"], w[p + "attn.o_norm.weight"].repeat(r))
        for k in (*(f"attn.{n}.weight" for n in GDN_KEPT), "attn_norm.weight", "mlp.down_proj.weight"):
            assert out[p + k] is w[p + k], k


def test_gdn_step0_distance_from_the_source(tmp_path):
    """The figures in statex_dist/archs/gdn/expansion.py's docstring, measured again."""
    from statex_dist import load_model
    from statex_dist.models import build_model
    from tests.conftest import rel_err
    from tests.fla_reference import make_fla_gdn
    make_fla_gdn(tmp_path, num_hidden_layers=3, num_heads=2, num_v_heads=4, head_dim=16, expand_v=1.0)
    src = load_model(tmp_path).eval()
    ids = torch.randint(0, 101, (2, 64), generator=torch.Generator().manual_seed(1))
    w = {n: p.detach() for n, p in src.named_parameters()}
    with torch.no_grad():
        ref = src(ids)
    for init, want_rel, want_lp in (("merge", 0.14, 0.011), ("reinit", 0.24, 0.020)):
        plan = ExpansionPlan([1], heads=1, init=init)
        new = expand_config(src.config, plan)
        model = build_model(new, init=False).eval()
        model.load_state_dict({n: expand_tensor(n, w[n], src.config, new, plan) for n, _ in model.named_parameters()})
        with torch.no_grad():
            out = model(ids)
        lp = (out.log_softmax(-1) - ref.log_softmax(-1)).abs().mean().item()
        assert abs(rel_err(out, ref) - want_rel) < 0.01 and abs(lp - want_lp) < 0.001, (init, rel_err(out, ref), lp)


# --- Mamba2 ------------------------------------------------------------------------------------------

def _blocks(cfg, layer, t, kind):
    """Split in_proj rows / conv channels into named blocks for ``cfg``'s layer."""
    E, G, N, H = cfg.d_inner, cfg.ngroups, cfg.d_state[layer], cfg.nheads
    if kind == "in_proj":
        z, x, B, C, dt = t.split([E, E, G * N, G * N, H])
        return dict(z=z, x=x, B=B, C=C, dt=dt)
    x, B, C = t.split([E, G * N, G * N])
    return dict(x=x, B=B, C=C)


MIXER = {"in_proj": "mixer.in_proj.weight", "conv_w": "mixer.conv1d.weight", "conv_b": "mixer.conv1d.bias"}


def test_mamba2_reinit():
    old = mamba2_cfg()
    plan = ExpansionPlan([0, 2], d_state=64, init="reinit")
    new = expand_config(old, plan)
    w = random_weights(old)
    out = expand_all(w, old, new, plan)
    check_shapes(out, new)
    check_untouched(out, w, plan.layers)
    H = old.nheads
    for i in plan.layers:
        p = f"layers.{i}."
        for kind, name, bound in (("in_proj", MIXER["in_proj"], 1 / 8), ("conv", MIXER["conv_w"], 1 / 2),
                                  ("conv", MIXER["conv_b"], 1 / 2)):
            a, b = _blocks(old, i, w[p + name], kind), _blocks(new, i, out[p + name], kind)
            for k in a:
                if k in ("B", "C"):
                    assert b[k].shape[0] == 2 * 64
                    assert b[k].abs().max() <= bound and b[k].abs().max() > 0.8 * bound, (name, k)
                else:
                    assert torch.equal(a[k], b[k]), (name, k)
        assert torch.equal(out[p + "mixer.dt_bias"], torch.ones(H))
        assert torch.allclose(out[p + "mixer.A_log"], torch.log(torch.arange(1.0, H + 1)), rtol=0, atol=0)
        assert torch.equal(out[p + "mixer.norm.weight"], torch.ones(old.d_inner))
        for k in ("mixer.D", "mixer.out_proj.weight", "norm.weight"):
            assert out[p + k] is w[p + k]


@pytest.mark.parametrize("N2", [32, 40])  # 40: N' not a multiple of N, the tiling is cut
def test_mamba2_copy_tiles_each_group(N2):
    old = mamba2_cfg()
    plan = ExpansionPlan([1], d_state=N2, init="copy")
    new = expand_config(old, plan)
    w = random_weights(old)
    out = expand_all(w, old, new, plan)
    check_shapes(out, new)
    check_untouched(out, w, [1])
    G, N = 2, 16
    idx = torch.arange(N2) % N
    for name, kind in ((MIXER["in_proj"], "in_proj"), (MIXER["conv_w"], "conv"), (MIXER["conv_b"], "conv")):
        a, b = _blocks(old, 1, w["layers.1." + name], kind), _blocks(new, 1, out["layers.1." + name], kind)
        for k in a:
            if k in ("B", "C"):
                want = a[k].reshape(G, N, *a[k].shape[1:])[:, idx].reshape(G * N2, *a[k].shape[1:])
                assert torch.equal(b[k], want), (name, k)
            else:
                assert torch.equal(a[k], b[k])
    for k in ("mixer.dt_bias", "mixer.A_log", "mixer.norm.weight", "mixer.D", "mixer.out_proj.weight"):
        assert out["layers.1." + k] is w["layers.1." + k]


def test_mamba2_zero_pads_each_group():
    old = mamba2_cfg()
    plan = ExpansionPlan([0, 1, 2], d_state=24, init="zero")
    new = expand_config(old, plan)
    w = random_weights(old)
    out = expand_all(w, old, new, plan)
    check_shapes(out, new)
    for name, kind in ((MIXER["in_proj"], "in_proj"), (MIXER["conv_w"], "conv"), (MIXER["conv_b"], "conv")):
        a, b = _blocks(old, 0, w["layers.0." + name], kind), _blocks(new, 0, out["layers.0." + name], kind)
        for k in ("B", "C"):
            grouped = b[k].reshape(2, 24, *b[k].shape[1:])
            assert torch.equal(grouped[:, :16], a[k].reshape(2, 16, *a[k].shape[1:]))
            assert not grouped[:, 16:].any()


def test_mamba2_preserve_keeps_old_rows_draws_new_ones_and_zeroes_new_c_conv():
    old = mamba2_cfg()
    plan = ExpansionPlan([1], d_state=24, init="preserve")
    new = expand_config(old, plan)
    w = random_weights(old)
    out = expand_all(w, old, new, plan)
    check_shapes(out, new)
    check_untouched(out, w, [1])
    bounds = {MIXER["in_proj"]: 1 / 8, MIXER["conv_w"]: 1 / 2, MIXER["conv_b"]: 1 / 2}  # reinit's: 1/sqrt(fan_in)
    for name, kind in ((MIXER["in_proj"], "in_proj"), (MIXER["conv_w"], "conv"), (MIXER["conv_b"], "conv")):
        a, b = _blocks(old, 1, w["layers.1." + name], kind), _blocks(new, 1, out["layers.1." + name], kind)
        for k in ("B", "C"):
            grouped = b[k].reshape(2, 24, *b[k].shape[1:])
            assert torch.equal(grouped[:, :16], a[k].reshape(2, 16, *a[k].shape[1:])), (name, k)
            fresh = grouped[:, 16:]
            if kind == "conv" and k == "C":
                assert not fresh.any(), name  # C_new = SiLU(0) = 0 at step 0
            else:
                assert 0.8 * bounds[name] < fresh.abs().max() <= bounds[name], (name, k)
        assert all(torch.equal(a[k], b[k]) for k in a if k not in ("B", "C"))
    for k in ("mixer.dt_bias", "mixer.A_log", "mixer.norm.weight", "mixer.D", "mixer.out_proj.weight"):
        assert out["layers.1." + k] is w["layers.1." + k]


def test_dtype_and_device_are_kept():
    old = mamba2_cfg()
    plan = ExpansionPlan([0], d_state=32)
    new = expand_config(old, plan)
    w = random_weights(old, dtype=torch.bfloat16)
    out = expand_all(w, old, new, plan)
    assert all(t.dtype == torch.bfloat16 for t in out.values())


# --- determinism -------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["gla", "mamba2", "gdn"])
def test_deterministic_and_order_independent(arch):
    if arch == "gla":
        old, kw = gla_cfg(), dict(gla_heads=1, gate_bias_init=(-1.0, 1.0))
    elif arch == "gdn":
        old, kw = gdn_cfg(), dict(heads=1)
    else:
        old, kw = mamba2_cfg(), dict(d_state=48)
    plan = ExpansionPlan([0, 2], seed=7, **kw)
    new = expand_config(old, plan)
    w = random_weights(old)
    torch.manual_seed(1)
    a = expand_all(w, old, new, plan)
    torch.manual_seed(2)  # the global RNG plays no part
    b = expand_all(w, old, new, plan, order=list(reversed(list(w))))
    assert all(torch.equal(a[n], b[n]) for n in w)
    other = expand_all(w, old, new, ExpansionPlan([0, 2], seed=8, **kw))
    drawn = [n for n in w if n.endswith(("q_proj.weight", "in_proj.weight", "conv1d.bias"))
             and n.startswith(("layers.0.", "layers.2."))]
    assert drawn and all(not torch.equal(a[n], other[n]) for n in drawn)
    # same-shaped tensors of different layers get different values
    n0, n2 = drawn[0], drawn[0].replace("layers.0.", "layers.2.")
    assert not torch.equal(a[n0], a[n2])


# --- misuse ------------------------------------------------------------------------------------------

def test_wrong_shape_and_wrong_new_config_are_reported():
    old = mamba2_cfg()
    plan = ExpansionPlan([0], d_state=32)
    new = expand_config(old, plan)
    with pytest.raises(ValueError, match=r"layers.0.mixer.in_proj.weight: expected shape \[328, 64\]"):
        expand_tensor("layers.0.mixer.in_proj.weight", torch.zeros(3, 64), old, new, plan)
    with pytest.raises(ValueError, match="not made by expand_config"):
        expand_tensor("layers.0.mixer.A_log", torch.zeros(8), old, old, plan)
    gold = gla_cfg()
    gplan = ExpansionPlan([0], gla_heads=2)
    with pytest.raises(ValueError, match="no StateX rule"):
        expand_tensor("layers.0.attn.mystery.weight", torch.zeros(3), gold, expand_config(gold, gplan), gplan)
    dold = gdn_cfg()
    dplan = ExpansionPlan([0], heads=2, init="merge")
    with pytest.raises(ValueError, match="no StateX rule for this Gated DeltaNet parameter"):
        expand_tensor("layers.0.attn.mystery.weight", torch.zeros(3), dold, expand_config(dold, dplan), dplan)
    with pytest.raises(ValueError, match=r"layers.0.attn.A_log: expected shape \[8\]"):
        expand_tensor("layers.0.attn.A_log", torch.zeros(4), dold, expand_config(dold, dplan), dplan)
