"""load_model on Mamba2 folders gives transformers' Mamba2ForCausalLM logits (fp32, rel err <= 1e-5)."""
import json

import pytest
import torch
from transformers import Mamba2Config as HFMamba2Config
from transformers import Mamba2ForCausalLM as HFMamba2

from statex_dist import load_model
from tests.conftest import rel_err

TOL = 1e-5


def make_hf_mamba2(folder, seed=0, vocab=101, **overrides):
    torch.manual_seed(seed)
    kw = dict(hidden_size=64, num_hidden_layers=2, state_size=16, head_dim=16, num_heads=8, n_groups=1,
              vocab_size=vocab, expand=2, chunk_size=8, tie_word_embeddings=False)
    kw.update(overrides)
    model = HFMamba2(HFMamba2Config(**kw)).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(("D", "bias")):
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model.eval()


def write_mamba_ssm(hf_model, folder, vocab, multiple=16):
    """The same weights as a mamba_ssm checkpoint: config.json with ssm_cfg, pytorch_model.bin."""
    c = hf_model.config
    folder.mkdir(parents=True, exist_ok=True)
    json.dump({"d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers, "vocab_size": vocab,
               "ssm_cfg": {"layer": "Mamba2", "d_state": c.state_size, "headdim": c.head_dim, "ngroups": c.n_groups,
                           "expand": c.expand, "chunk_size": c.chunk_size},
               "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
               "fused_add_norm": True, "pad_vocab_size_multiple": multiple, "tie_embeddings": True},
              open(folder / "config.json", "w"))
    sd = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in hf_model.state_dict().items()}
    sd["lm_head.weight"] = sd["backbone.embedding.weight"]
    torch.save(sd, folder / "pytorch_model.bin")


@pytest.mark.parametrize("ngroups,tied,T", [(1, False, 21), (2, True, 21), (2, False, 8), (1, True, 3)])
def test_logits_match_transformers(tmp_path, ngroups, tied, T):
    ref = make_hf_mamba2(tmp_path, n_groups=ngroups, tie_word_embeddings=tied)
    ids = torch.randint(0, 101, (2, T), generator=torch.Generator().manual_seed(1))
    model = load_model(tmp_path)
    with torch.no_grad():
        ours, want = model(ids), ref(ids).logits
    assert ours.shape == (2, T, 101)
    assert rel_err(ours, want) <= TOL


@pytest.mark.parametrize("ngroups", [1, 2])
def test_mamba_ssm_format_with_vocab_padding(tmp_path, ngroups):
    # mamba_ssm stores the embedding padded to pad_vocab_size_multiple (101 -> 112 rows); logits keep 101
    ref = make_hf_mamba2(tmp_path / "hf", vocab=112, n_groups=ngroups, tie_word_embeddings=True)
    write_mamba_ssm(ref, tmp_path / "ssm", vocab=101)
    ids = torch.randint(0, 101, (1, 29), generator=torch.Generator().manual_seed(2))
    model = load_model(tmp_path / "ssm")
    assert model.config.checkpoint_vocab_size() == 112
    with torch.no_grad():
        ours, want = model(ids), ref(ids).logits[..., :101]
    assert ours.shape == (1, 29, 101)
    assert rel_err(ours, want) <= TOL
