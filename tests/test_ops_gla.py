"""chunk_gla_torch against fla's token-by-token reference (values and gradients, fp32)."""

import pytest
import torch
import torch.nn.functional as F

from statex_dist.ops import chunk_gla_torch, gla_attention
from tests.conftest import rel_err

naive = pytest.importorskip("fla.ops.gla.naive")

# max|a - b| / max|b| for every output and every gradient, both sides computed in fp32
RTOL = 1e-5


def make_inputs(B, T, H, K, V, gate, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.randn(B, T, H, K, generator=gen)
    v = torch.randn(B, T, H, V, generator=gen)
    x = torch.randn(B, T, H, K, generator=gen)
    if gate == "normal":  # GLA's gate: logsigmoid / 16
        g = F.logsigmoid(x) / 16
    elif gate == "strong":  # about -1.25 per token: exp(-cumsum g) overflows fp32 within 71 tokens
        g = F.logsigmoid(x - 20) / 16
    elif gate == "raw":  # unnormalised, about -20 per token
        g = F.logsigmoid(x - 20)
    elif gate == "mixed":  # half the channels keep their state, half forget at once
        g = torch.where(torch.arange(K) < K // 2, F.logsigmoid(x + 6) / 16, F.logsigmoid(x - 20))
    else:
        raise ValueError(gate)
    h0 = torch.randn(B, H, K, V, generator=gen)
    do = torch.randn(B, T, H, V, generator=gen)
    dht = torch.randn(B, H, K, V, generator=gen)
    return (q, k, v, g, h0), (do, dht)


def run(fn, inputs, cotangents, **kw):
    leaves = [t.clone().requires_grad_() for t in inputs]
    q, k, v, g, h0 = leaves
    o, ht = fn(q, k, v, g, initial_state=h0, output_final_state=True, **kw)
    do, dht = cotangents
    grads = torch.autograd.grad((o * do).sum() + (ht * dht).sum(), leaves)
    return [o, ht, *grads]


def check(inputs, cotangents, **kw):
    ref = run(naive.naive_recurrent_gla, inputs, cotangents)
    out = run(chunk_gla_torch, inputs, cotangents, **kw)
    names = ["o", "final_state", "dq", "dk", "dv", "dg", "dh0"]
    for name, a, b in zip(names, out, ref):
        assert torch.isfinite(a).all(), name
        assert rel_err(a, b) <= RTOL, (name, rel_err(a, b))


@pytest.mark.parametrize(
    "B,T,H,K,V,chunk_size",
    [
        (2, 128, 4, 16, 32, 64),  # whole chunks
        (2, 100, 4, 16, 24, 64),  # T not a multiple of the chunk
        (1, 37, 1, 8, 12, 16),  # several chunks, ragged tail, one head
        (2, 20, 1, 16, 8, 64),  # T < chunk
        (1, 1, 4, 8, 16, 64),  # a single token
        (1, 70, 2, 32, 16, 8),  # many small chunks
    ],
)
def test_matches_naive(B, T, H, K, V, chunk_size):
    inputs, cot = make_inputs(B, T, H, K, V, "normal")
    check(inputs, cot, chunk_size=chunk_size)


@pytest.mark.parametrize("gate", ["strong", "raw", "mixed"])
def test_strongly_decaying_gate(gate):
    inputs, cot = make_inputs(2, 150, 2, 16, 16, gate, seed=1)
    check(inputs, cot)


def test_without_states_and_dtype():
    inputs, _ = make_inputs(1, 50, 2, 16, 16, "normal", seed=2)
    q, k, v, g, _ = inputs
    o, ht = chunk_gla_torch(q, k, v, g)
    assert ht is None
    o_ref, _ = naive.naive_recurrent_gla(q, k, v, g)
    assert rel_err(o, o_ref) <= RTOL
    o16, ht16 = chunk_gla_torch(q.bfloat16(), k.bfloat16(), v.bfloat16(), g.bfloat16(), output_final_state=True)
    assert o16.dtype == torch.bfloat16 and ht16.dtype == torch.float32
    assert torch.isfinite(o16.float()).all()


def test_scale_and_chunk_invariance():
    inputs, _ = make_inputs(1, 90, 2, 16, 16, "normal", seed=3)
    q, k, v, g, h0 = inputs
    base, hb = chunk_gla_torch(q, k, v, g, scale=0.3, initial_state=h0, output_final_state=True, chunk_size=64)
    for cs in (1, 4, 32, 128):
        o, h = chunk_gla_torch(q, k, v, g, scale=0.3, initial_state=h0, output_final_state=True, chunk_size=cs)
        assert rel_err(o, base) <= RTOL and rel_err(h, hb) <= RTOL
    # scale only multiplies q
    o2, _ = chunk_gla_torch(q * 0.3 * 4, k, v, g, initial_state=h0)  # K ** -0.5 = 1/4
    assert rel_err(o2, base) <= RTOL
    with pytest.raises(ValueError):
        chunk_gla_torch(q, k, v, g, chunk_size=48)


def test_dispatch_on_cpu(monkeypatch):
    inputs, _ = make_inputs(1, 40, 2, 8, 8, "normal", seed=4)
    q, k, v, g, h0 = inputs
    expected = chunk_gla_torch(q, k, v, g, initial_state=h0, output_final_state=True)
    for choice in (None, "auto", "torch"):
        if choice is None:
            monkeypatch.delenv("STATEX_KERNELS", raising=False)
        else:
            monkeypatch.setenv("STATEX_KERNELS", choice)
        o, h = gla_attention(q, k, v, g, initial_state=h0, output_final_state=True)
        assert torch.equal(o, expected[0]) and torch.equal(h, expected[1])
    monkeypatch.setenv("STATEX_KERNELS", "bogus")
    with pytest.raises(ValueError):
        gla_attention(q, k, v, g)
