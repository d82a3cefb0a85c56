"""HF exports whose state shapes differ per layer load through AutoModelForCausalLM(trust_remote_code=True)
with load_model's logits and generate greedily like load_model; uniform exports stay stock."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"  # everything here is local; never reach for the hub

import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from statex_dist import archs, load_model  # noqa: E402
from statex_dist.checkpoint.tensor_files import TensorReader  # noqa: E402
from statex_dist.reshard import run  # noqa: E402
from tests.conftest import rel_err  # noqa: E402
from tests.fla_reference import fla_logits, make_fla_gdn, make_fla_gla  # noqa: E402
from tests.test_model_mamba2 import make_hf_mamba2, write_mamba_ssm  # noqa: E402
from tests.test_reshard import assert_bit_identical  # noqa: E402

TOL = 1e-5
VOCAB = 101
MODELING = ("configuration_statex.py", "modeling_statex.py")


def export(src, dst, *flags):
    run(["--src", str(src), "--dst", str(dst), *flags, "--format", "hf"])
    return dst


def config_of(folder):
    return json.loads((folder / "config.json").read_text())


def load_remote(folder):
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    model.generation_config.eos_token_id = None  # random weights: always run to max_new_tokens
    return model


def greedy_by_hand(model, ids, steps):
    """Greedy decoding with load_model's model, the whole prefix fed every step."""
    for _ in range(steps):
        with torch.no_grad():
            nxt = model(ids)[:, -1].argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return ids


def check_remote(folder, arch, T):
    cfg, remote_names = config_of(folder), archs.get(arch).remote
    assert cfg["model_type"] == remote_names.model_type and cfg["architectures"] == [remote_names.model_class]
    assert cfg["auto_map"] == {"AutoConfig": f"configuration_statex.{remote_names.config_class}",
                               "AutoModelForCausalLM": f"modeling_statex.{remote_names.model_class}"}
    assert all((folder / f).is_file() for f in MODELING)
    remote, ours = load_remote(folder), load_model(folder)
    assert remote.dtype == torch.float32
    ids = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = remote(ids).logits, ours(ids)
        loss = remote(ids, labels=ids).loss
    assert got.shape == want.shape == (2, T, VOCAB)
    assert rel_err(got, want) <= TOL
    assert torch.allclose(loss, F.cross_entropy(want[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1)), rtol=1e-5)
    prompt = ids[:, :5]
    expected = greedy_by_hand(ours, prompt, 8)
    for use_cache in (True, False):  # a recurrent state carried from step to step, or the whole prefix each step
        out = remote.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=use_cache)
        assert out.shape == (2, 13)
        assert torch.equal(out, expected), use_cache
    return remote


def check_left_padding(model):
    """A left-padded row gives the logits and generation of the same tokens unpadded."""
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        padded = model(ids, attention_mask=mask).logits[1, 3:]
        alone = model(ids[1:, 3:]).logits[0]
    assert rel_err(padded, alone) <= TOL
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert torch.equal(out[1, 12:], model.generate(ids[1:, 3:], max_new_tokens=6, do_sample=False)[0, 9:])


@pytest.mark.parametrize("short_conv,tied,fuse_norm", [(False, False, True), (True, True, True), (True, False, False)])
def test_gla_per_layer_heads(tmp_path, short_conv, tied, fuse_norm):
    src = tmp_path / "src"
    make_fla_gla(src, vocab_size=VOCAB, use_short_conv=short_conv, tie_word_embeddings=tied, fuse_norm=fuse_norm)
    dst = export(src, tmp_path / "dst", "--expand-layers", "0", "--init", "merge")
    assert config_of(dst)["statex_num_heads"] == [1, 4]
    model = check_remote(dst, "gla", T=70)  # two chunks of the GLA scan
    if short_conv:
        check_left_padding(model)


@pytest.mark.parametrize("use_gate,short_conv,tied", [(True, True, False), (False, False, True)])
def test_gdn_per_layer_heads(tmp_path, use_gate, short_conv, tied):
    """One Gated DeltaNet layer merged (2 key and 4 value heads -> 1 of each): the remote code's fla layers."""
    src = tmp_path / "src"
    make_fla_gdn(src, vocab_size=VOCAB, num_heads=2, num_v_heads=4, use_gate=use_gate, use_short_conv=short_conv,
                 tie_word_embeddings=tied)
    dst = export(src, tmp_path / "dst", "--expand-layers", "0", "--init", "merge")
    cfg = config_of(dst)
    assert cfg["statex_num_heads"] == [1, 2] and cfg["statex_num_v_heads"] == [1, 4]
    model = check_remote(dst, "gdn", T=37)
    if short_conv:
        check_left_padding(model)


def test_gdn_all_layers_merged_loads_in_fla(tmp_path):
    """Every layer merged: a stock fla folder (1 head of head_dim K, expand_v V / K) whose logits in fla's own
    GatedDeltaNetForCausalLM equal load_model's."""
    from fla.models import GatedDeltaNetForCausalLM
    src = tmp_path / "src"
    make_fla_gdn(src, vocab_size=VOCAB, num_heads=2, num_v_heads=4)
    dst = export(src, tmp_path / "dst", "--expand-every", "1", "--init", "merge")
    cfg = config_of(dst)
    assert cfg["model_type"] == "gated_deltanet" and "auto_map" not in cfg
    assert (cfg["num_heads"], cfg["num_v_heads"], cfg["head_dim"], cfg["expand_v"]) == (1, 1, 32, 2.0)
    fla = GatedDeltaNetForCausalLM.from_pretrained(dst).float().eval()
    ids = torch.randint(0, VOCAB, (2, 29), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = load_model(dst)(ids)
    assert rel_err(ours, fla_logits(fla, ids)) <= TOL


@pytest.mark.parametrize("ngroups,tied", [(1, False), (2, True)])
def test_mamba2_per_layer_d_state(tmp_path, ngroups, tied):
    src = tmp_path / "src"
    make_hf_mamba2(src, n_groups=ngroups, tie_word_embeddings=tied)
    dst = export(src, tmp_path / "dst", "--expand-layers", "0", "--d-state", "32")
    assert config_of(dst)["statex_d_state"] == [32, 16]
    model = check_remote(dst, "mamba2", T=21)  # chunk_size 8
    check_left_padding(model)


def test_mamba_ssm_source_exports_transformers_naming(tmp_path):
    # mamba_ssm pads its embedding (101 -> 112 rows); the export keeps vocab_size 101 and the padding
    write_mamba_ssm(make_hf_mamba2(tmp_path / "hf", vocab=112), tmp_path / "src", vocab=VOCAB)
    dst = export(tmp_path / "src", tmp_path / "dst", "--expand-layers", "1", "--d-state", "64")
    cfg = config_of(dst)
    assert cfg["vocab_size"] == VOCAB and cfg["pad_vocab_size_multiple"] == 16 and cfg["tie_word_embeddings"]
    assert not (dst / "pytorch_model.bin").exists()
    assert list(TensorReader(dst).shape("backbone.embeddings.weight")) == [112, 64]
    check_remote(dst, "mamba2", T=21)


def test_reshard_roundtrip_keeps_remote_code(tmp_path):
    make_fla_gla(tmp_path / "src", vocab_size=VOCAB, use_short_conv=True)
    dst = export(tmp_path / "src", tmp_path / "dst", "--expand-layers", "1", "--init", "merge")
    run(["--src", str(dst), "--dst", str(tmp_path / "tp2"), "--tp", "2"])
    back = export(tmp_path / "tp2", tmp_path / "back")
    assert_bit_identical(dst, back)
    assert config_of(back) == config_of(dst)
    assert all((back / f).read_bytes() == (dst / f).read_bytes() for f in MODELING)


@pytest.mark.parametrize("arch", ["gla", "mamba2"])
def test_uniform_exports_stay_stock(tmp_path, arch):
    src = tmp_path / "src"
    if arch == "gla":
        make_fla_gla(src, vocab_size=VOCAB)
        expand_all = ("--expand-every", "1", "--init", "merge")  # every layer 1 head: alike again
    else:
        make_hf_mamba2(src)
        expand_all = ("--expand-every", "1", "--d-state", "32")
    for dst in (export(src, tmp_path / "plain"), export(src, tmp_path / "all", *expand_all)):
        cfg = config_of(dst)
        assert cfg["model_type"] == arch and "auto_map" not in cfg
        assert not any((dst / f).exists() for f in MODELING)
    # a per-layer export whose remaining layers are expanded too is alike again: back to the stock type
    per_layer = export(src, tmp_path / "per-layer", "--expand-layers", "0", *expand_all[2:])
    assert config_of(per_layer)["model_type"] == f"statex_{arch}"
    alike = export(per_layer, tmp_path / "alike", "--expand-layers", "1", *expand_all[2:])
    cfg = config_of(alike)
    assert cfg["model_type"] == arch and "auto_map" not in cfg
    assert cfg["architectures"] == [{"gla": "GLAForCausalLM", "mamba2": "Mamba2ForCausalLM"}[arch]]
    assert not any((alike / f).exists() for f in MODELING)


@pytest.mark.parametrize("arch", ["gla", "mamba2", "gdn"])
def test_layers_and_cache_are_the_libraries_with_each_layers_shape(tmp_path, arch):
    """The remote code builds the libraries' modules (fla's GLA and GatedDeltaNet layers, transformers' Mamba2
    mixer) from each layer's config, and the generation cache keeps each layer's own state shape."""
    src = tmp_path / "src"
    if arch == "gla":
        from fla.layers.gla import GatedLinearAttention as Mixer
        make_fla_gla(src, vocab_size=VOCAB)
        dst = export(src, tmp_path / "dst", "--expand-layers", "0", "--init", "merge")
    elif arch == "gdn":
        from fla.layers.gated_deltanet import GatedDeltaNet as Mixer
        make_fla_gdn(src, vocab_size=VOCAB, num_heads=2, num_v_heads=4)   # K = 32, V = 64
        dst = export(src, tmp_path / "dst", "--expand-layers", "0", "--init", "merge")
    else:
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as Mixer
        make_hf_mamba2(src)
        dst = export(src, tmp_path / "dst", "--expand-layers", "0", "--d-state", "32")
    model = load_remote(dst)
    mixers = [layer.mixer if arch == "mamba2" else layer.attn for layer in model.get_decoder().layers]
    assert all(isinstance(m, Mixer) for m in mixers)
    with torch.no_grad():
        cache = model(torch.zeros(2, 3, dtype=torch.long), use_cache=True).cache
    if arch == "gla":  # fla's Cache: [B, H, dv, dk] per layer
        assert [m.num_heads for m in mixers] == [1, 4]
        assert [tuple(cache[i]["recurrent_state"].shape) for i in range(2)] == [(2, 1, 64, 32), (2, 4, 16, 8)]
    elif arch == "gdn":  # fla's Cache: [B, Hv, dv, dk] per layer
        assert [(m.num_heads, m.num_v_heads) for m in mixers] == [(1, 1), (2, 4)]
        assert [tuple(cache[i]["recurrent_state"].shape) for i in range(2)] == [(2, 1, 64, 32), (2, 4, 16, 16)]
    else:  # transformers' DynamicCache: [B, heads, head_dim, d_state] per layer
        assert [m.ssm_state_size for m in mixers] == [32, 16]
        assert [layer.recurrent_states[0].shape[-1] for layer in cache.layers] == [32, 16]


NO_TRITON = """
import json, sys
sys.modules["triton"] = None  # what a client has where triton is missing: fla installed, its import failing
from transformers import AutoModelForCausalLM
import torch
report = {}
try:
    AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)
    report["gla"] = "loaded"
except ImportError as e:
    report["gla"] = str(e)
model = AutoModelForCausalLM.from_pretrained(sys.argv[2], trust_remote_code=True)
with torch.no_grad():
    report["mamba2"] = list(model(torch.zeros(1, 5, dtype=torch.long)).logits.shape)
report["fla_imported"] = "fla.layers.gla" in sys.modules
print("REPORT " + json.dumps(report))
"""


def test_export_without_triton_names_it(tmp_path):
    """Where fla is installed but does not import (no triton, as on a client's CPU machine), a GLA export
    relays fla's import error and its fix; a Mamba2 export, which needs no fla, still loads."""
    import subprocess
    import sys
    from pathlib import Path

    make_fla_gla(tmp_path / "gla", vocab_size=VOCAB)
    gla = export(tmp_path / "gla", tmp_path / "gla-x", "--expand-layers", "0", "--init", "merge")
    make_hf_mamba2(tmp_path / "m2")
    m2 = export(tmp_path / "m2", tmp_path / "m2-x", "--expand-layers", "0", "--d-state", "32")
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-c", NO_TRITON, str(gla), str(m2)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    report = json.loads(lines[-1][len("REPORT "):])
    message = report["gla"]
    assert "needs fla" in message and "triton" in message and "pip install triton" in message, message
    assert "None in sys.modules" in message, message  # the underlying import error, relayed
    assert report["mamba2"] == [1, 5, VOCAB] and not report["fla_imported"]
