"""causal_conv1d against a direct loop, with and without carried states."""

import pytest
import torch
import torch.nn.functional as F

from statex_dist.ops import causal_conv1d
from tests.conftest import rel_err

RTOL = 1e-6  # max|a - b| / max|b|, fp32 against an fp64 loop


def loop_conv(x, weight, bias, activation, initial_state):
    """out[:, t, d] = act(bias[d] + sum_w weight[d, w] * xx[:, t + w, d]), xx = [state; x]."""
    x, weight = x.double(), weight.double()
    Bsz, T, D = x.shape
    W = weight.shape[1]
    if initial_state is None:
        prev = torch.zeros(Bsz, W - 1, D, dtype=x.dtype)
    else:
        prev = initial_state.double().transpose(1, 2)
    xx = torch.cat([prev, x], dim=1)  # [B, W-1+T, D]
    out = []
    for t in range(T):
        acc = (xx[:, t : t + W, :] * weight.t()[None]).sum(1)
        if bias is not None:
            acc = acc + bias.double()
        out.append(acc)
    out = torch.stack(out, dim=1)
    if activation == "silu":
        out = F.silu(out)
    return out, xx[:, -(W - 1):, :].transpose(1, 2)


@pytest.mark.parametrize("T", [1, 2, 9])
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_loop(T, activation, with_state):
    gen = torch.Generator().manual_seed(T)
    Bsz, D, W = 2, 6, 4
    x = torch.randn(Bsz, T, D, generator=gen)
    weight = torch.randn(D, W, generator=gen)
    bias = torch.randn(D, generator=gen)
    state = torch.randn(Bsz, D, W - 1, generator=gen) if with_state else None
    leaves = [t.clone().requires_grad_() for t in (x, weight, bias)]
    out, final = causal_conv1d(*leaves, activation=activation, initial_state=state, return_final_state=True)
    ref, ref_final = loop_conv(x, weight, bias, activation, state)
    assert out.shape == (Bsz, T, D) and final.shape == (Bsz, D, W - 1)
    assert rel_err(out, ref) <= RTOL
    assert torch.equal(final.double(), ref_final)  # the final state is the last W-1 inputs, copied
    ref_leaves = [t.double().requires_grad_() for t in (x, weight, bias)]
    ref_out, _ = loop_conv(*ref_leaves, activation, state)
    cot = torch.randn(Bsz, T, D, generator=gen)
    grads = torch.autograd.grad((out * cot).sum(), leaves)
    ref_grads = torch.autograd.grad((ref_out * cot.double()).sum(), ref_leaves)
    for a, b in zip(grads, ref_grads):
        assert rel_err(a, b) <= RTOL


def test_streaming_equals_one_pass():
    """Feeding a sequence in pieces with the carried state gives the one-pass result."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 11, 5, generator=gen)
    weight, bias = torch.randn(5, 4, generator=gen), torch.randn(5, generator=gen)
    full = causal_conv1d(x, weight, bias, activation="silu")
    state, parts = None, []
    for piece in x.split([3, 1, 5, 2], dim=1):
        out, state = causal_conv1d(piece, weight, bias, "silu", initial_state=state, return_final_state=True)
        parts.append(out)
    assert torch.allclose(torch.cat(parts, dim=1), full, rtol=0, atol=1e-6)


def test_bad_activation():
    with pytest.raises(ValueError):
        causal_conv1d(torch.randn(1, 3, 2), torch.randn(2, 4), activation="relu")
