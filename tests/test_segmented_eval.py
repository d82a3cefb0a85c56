"""Evaluation at any length: the forward pass run segment by segment, carrying every layer's recurrent and
conv states (statex_dist.models.recurrent_state), gives the logits of the whole pass, for every architecture;
and the evaluations with ``segment_len`` give the numbers they give without it.

Tolerance (fp32): the logits within 2e-5 relative (max |a - b| / max |b|), the carried states within 1e-5.
The conv tails are copies of the conv inputs (not bitwise those of the whole pass: a matmul over fewer rows
blocks its sums differently, ~1e-7; and after layer 0 the inputs went through the scans); the scans re-chunk at
every segment boundary (a chunk of the whole pass is split in two, and a state enters where the whole pass
had a chunk-local sum), which reorders fp32 sums: measured ~3e-6 (GLA) to ~1e-5 at worst here, after 2-3
layers of that and the LM head.
"""
from __future__ import annotations

import pytest
import torch

from statex_dist.models import build_model
from statex_dist.models.config import config_from_dict
from statex_dist.models.recurrent_state import RecurrentState
from statex_dist.tiny import PRETRAINED
from tests.conftest import rel_err

TINY_GLA = PRETRAINED / "tiny-gla"
LOGITS_TOL = 2e-5
STATE_TOL = 1e-5

# per-layer shapes as an expansion leaves them: one merged head / a grown d_state in layer 0
CONFIGS = {
    "gla": {"arch": "gla", "vocab_size": 64, "hidden_size": 32, "num_layers": 2, "num_heads": [1, 4],
            "expand_k": 1.0, "use_short_conv": True, "conv_size": 4, "hidden_ratio": 2},
    "gdn": {"arch": "gdn", "vocab_size": 64, "hidden_size": 32, "num_layers": 2, "num_heads": [1, 2],
            "num_v_heads": [1, 4], "key_dim": 32, "value_dim": 32, "use_short_conv": True, "conv_size": 4,
            "use_gate": True, "hidden_ratio": 2},
    "mamba2": {"arch": "mamba2", "vocab_size": 64, "hidden_size": 32, "num_layers": 2, "d_state": [32, 8],
               "headdim": 16, "expand": 2, "d_conv": 4, "chunk_size": 16},
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def model(request):
    return build_model(config_from_dict(dict(CONFIGS[request.param])), seed=3).eval()


def run_segments(model, ids, S):
    state = RecurrentState(len(model.layers))
    with torch.no_grad():
        logits = torch.cat([model(ids[:, s:s + S], state=state) for s in range(0, ids.shape[1], S)], 1)
    return logits, state


# (T, segment): segments that do not divide T; 3 = W - 1 < conv width 4 (a tail spans two segments); 1: decoding
@pytest.mark.parametrize("T,S", [(200, 64), (200, 3), (40, 1)])
def test_segments_equal_whole_pass(model, T, S):
    ids = torch.randint(0, 64, (2, T), generator=torch.Generator().manual_seed(T + S))
    with torch.no_grad():
        whole = model(ids)
    logits, state = run_segments(model, ids, S)
    assert logits.shape == whole.shape and state.tokens == T
    assert rel_err(logits, whole) <= LOGITS_TOL
    _, one = run_segments(model, ids, T)   # the whole pass's final states
    for a, b in zip(state.layers, one.layers):
        assert rel_err(a.recurrent, b.recurrent) <= STATE_TOL
        assert a.conv.keys() == b.conv.keys() and a.conv
        assert all(rel_err(a.conv[k], b.conv[k]) <= STATE_TOL for k in a.conv)


def test_state_size_does_not_grow(model):
    ids = torch.randint(0, 64, (1, 96))
    sizes = []
    state = RecurrentState(len(model.layers))
    with torch.no_grad():
        for s in range(0, 96, 32):
            model(ids[:, s:s + 32], state=state)
            sizes.append(state.nbytes())
    assert sizes[0] == sizes[-1] > 0


@pytest.fixture(scope="module")
def tiny_gla():
    from statex_dist import load_model
    return load_model(TINY_GLA)


def close(a, b, tol=1e-5):
    return torch.allclose(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), rtol=tol,
                          atol=tol)


def test_passkey_and_niah_segmented_equal_whole(tiny_gla):
    from statex_dist.eval import evaluate_niah, evaluate_passkey
    grid = dict(lengths=(300,), depths=(0.0, 0.5, 1.0), n=2, batch=2)
    for evaluate in (evaluate_passkey, evaluate_niah):
        whole = evaluate(tiny_gla, **grid)
        seg = evaluate(tiny_gla, segment_len=64, **grid)
        assert seg["accuracy"] == whole["accuracy"] and seg["token_accuracy"] == whole["token_accuracy"]
        assert close(seg["nll"], whole["nll"])


def test_mqar_and_ppl_segmented_equal_whole(tiny_gla):
    from statex_dist.eval import evaluate_mqar
    from statex_dist.eval.mqar import trained_vocab_offset
    from statex_dist.eval.perplexity import _batch_nll
    kw = dict(pairs=(16,), n=8, vocab_offset=trained_vocab_offset(TINY_GLA))
    assert evaluate_mqar(tiny_gla, segment_len=7, **kw) == evaluate_mqar(tiny_gla, **kw)
    ids = torch.randint(0, 256, (2, 100), generator=torch.Generator().manual_seed(0))
    labels = ids.roll(-1, 1)
    labels[:, -1] = labels[0, 10:30] = -100   # a segment with no labels at all counts nothing
    with torch.no_grad():
        for use_labels in (True, False):
            whole = _batch_nll(tiny_gla, ids, labels, use_labels)
            seg = _batch_nll(tiny_gla, ids, labels, use_labels, segment_len=16)
            assert seg[1] == whole[1] and abs(seg[0] - whole[0]) <= 1e-5 * whole[0]


def test_segment_len_needs_a_stateful_model():
    from statex_dist.eval import evaluate
    from statex_dist.eval.oracles import UniformModel
    with pytest.raises(ValueError, match="segment_len"):
        evaluate(UniformModel(300), tasks=("passkey",), segment_len=64)
