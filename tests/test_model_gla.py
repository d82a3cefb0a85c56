"""load_model on fla GLA folders gives fla's own logits (fp32, max relative error <= 1e-5)."""
import pytest
import torch

from statex_dist import load_model
from statex_dist.models import specs_for
from tests.conftest import rel_err
from tests.fla_reference import fla_logits, make_fla_gla

TOL = 1e-5


@pytest.mark.parametrize("heads,expand_k,tied,short_conv,fuse_norm", [
    (4, 0.5, False, False, True),
    (4, 0.5, True, True, True),
    (2, 1.0, False, True, False),
    (1, 0.5, True, False, True),
    (1, 1.0, False, True, True),
])
def test_logits_match_fla(tmp_path, heads, expand_k, tied, short_conv, fuse_norm):
    ref = make_fla_gla(tmp_path, num_heads=heads, expand_k=expand_k, tie_word_embeddings=tied,
                       use_short_conv=short_conv, fuse_norm=fuse_norm)
    ids = torch.randint(0, ref.config.vocab_size, (2, 77), generator=torch.Generator().manual_seed(1))
    model = load_model(tmp_path)
    with torch.no_grad():
        ours = model(ids)
    want = fla_logits(ref, ids)
    assert ours.shape == (2, 77, ref.config.vocab_size)
    assert rel_err(ours, want) <= TOL


def test_params_match_specs(tmp_path):
    make_fla_gla(tmp_path, use_short_conv=True)
    model = load_model(tmp_path)
    specs = specs_for(model.config, 1)
    assert {n: tuple(p.shape) for n, p in model.named_parameters()} == {n: s.shape for n, s in specs.items()}
    assert all(p.shard_spec == specs[n] for n, p in model.named_parameters())


def test_loss_equals_cross_entropy_of_logits(tmp_path):
    make_fla_gla(tmp_path, vocab_size=97)
    model = load_model(tmp_path)
    ids = torch.randint(0, 97, (2, 20))
    labels = ids.roll(-1, 1)
    labels[:, -1] = -100
    with torch.no_grad():
        loss = model(ids, labels=labels)
        want = torch.nn.functional.cross_entropy(model(ids).reshape(-1, 97), labels.reshape(-1))
    assert abs(loss.item() - want.item()) <= 1e-5 * want.item()
