"""chunk_gated_delta_rule_torch against fla's token-by-token reference (values and gradients), its dispatch,
and fla's Triton chunk_gated_delta_rule run interpreted on the CPU (opt-in: ``pytest -m interpret``)."""

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F

from statex_dist.ops import _dispatch, chunk_gated_delta_rule_torch, gated_delta_rule
from tests.conftest import rel_err
from tests.test_ops_interpret import PRELUDE, TOL as INTERPRET_TOL, run_interpreted

naive = pytest.importorskip("fla.ops.gated_delta_rule.naive")

# max|a - b| / max|b| for every output and every gradient, both sides in fp32. Measured over the fp32
# cases below: 7e-8 to 9.4e-7 (the largest: d initial_state without decay, where nothing fades over the
# 150 tokens); the bound leaves 10x over that, for other BLAS builds and summation orders.
RTOL = 1e-5
# bf16 inputs against the fp32 computation on the same (bf16-rounded) values: the path upcasts, so only
# the rounding of the output and of each bf16 gradient remains, at most 2^-8 of an element (bf16 keeps 8
# significant bits); measured 1.6e-3 (d beta) to 3.3e-3 (o). The fp32 state and its gradient are equal bitwise.
BF16_RTOL = 2.0 ** -8

NAMES = ["o", "final_state", "dq", "dk", "dv", "dg", "dbeta", "dh0"]


def make_inputs(B, T, H, K, V, gate="normal", seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen)
    x = torch.randn(B, T, H, generator=gen)
    g = {
        "normal": F.logsigmoid(x + 2),  # about -0.15 per token: the state lasts tens of tokens
        "strong": F.logsigmoid(x - 4),  # about -4 per token: exp(-cumsum g) would overflow fp32 in 23 tokens
        "none": torch.zeros_like(x),  # no decay: the plain delta rule
    }[gate]
    beta = torch.rand(B, T, H, generator=gen)
    if gate == "none":
        beta = 0.9 + 0.1 * beta  # near 1: each write almost replaces what k_t read
    h0 = torch.randn(B, H, K, V, generator=gen)
    do = torch.randn(B, T, H, V, generator=gen)
    dht = torch.randn(B, H, K, V, generator=gen)
    return (q, k, v, g, beta, h0), (do, dht)


def run(fn, inputs, cotangents, **kw):
    leaves = [t.clone().requires_grad_() for t in inputs]
    q, k, v, g, beta, h0 = leaves
    o, ht = fn(q, k, v, g, beta, initial_state=h0, output_final_state=True, **kw)
    do, dht = cotangents
    grads = torch.autograd.grad((o * do.to(o.dtype)).sum() + (ht * dht).sum(), leaves)
    return [o, ht, *grads]


def reference(q, k, v, g, beta, **kw):
    return naive.naive_recurrent_gated_delta_rule(q, k, v, beta, g, **kw)  # fla's order: beta before g


def errors(inputs, cotangents, **kw):
    """{name: rel_err} of chunk_gated_delta_rule_torch against fla's recurrent reference."""
    ref = run(reference, inputs, cotangents)
    out = run(chunk_gated_delta_rule_torch, inputs, cotangents, **kw)
    for name, a in zip(NAMES, out):
        assert torch.isfinite(a).all(), name
    return {name: rel_err(a, b) for name, a, b in zip(NAMES, out, ref)}


def check(errs, tol=RTOL):
    bad = {name: e for name, e in errs.items() if e > tol}
    assert not bad, (bad, errs)


@pytest.mark.parametrize(
    "B,T,H,K,V,chunk_size",
    [
        (2, 100, 3, 16, 24, 64),  # T not a multiple of the chunk, several heads, K != V
        (1, 20, 2, 8, 12, 64),  # T < chunk
        (1, 70, 2, 32, 16, 16),  # several chunks and a ragged tail, K > V
        (1, 1, 4, 8, 16, 64),  # a single token
    ],
)
def test_matches_naive(B, T, H, K, V, chunk_size):
    inputs, cot = make_inputs(B, T, H, K, V)
    check(errors(inputs, cot, chunk_size=chunk_size))


@pytest.mark.parametrize("gate", ["strong", "none"])
def test_gate_extremes(gate):
    inputs, cot = make_inputs(2, 150, 2, 16, 16, gate, seed=1)
    check(errors(inputs, cot))


def test_bf16_inputs():
    inputs, (do, dht) = make_inputs(2, 100, 2, 16, 32, seed=2)
    inputs = [t.bfloat16() for t in inputs[:5]] + [inputs[5]]  # the state stays fp32
    cot = (do.bfloat16().float(), dht)  # the output's cotangent is bf16 too
    out = run(chunk_gated_delta_rule_torch, inputs, cot)
    ref = run(chunk_gated_delta_rule_torch, [t.float() for t in inputs], cot)
    for name, a, b in zip(NAMES, out, ref):
        if name in ("final_state", "dh0"):
            assert a.dtype == torch.float32 and torch.equal(a, b), name
        else:
            assert a.dtype == torch.bfloat16 and rel_err(a, b) <= BF16_RTOL, (name, a.dtype, rel_err(a, b))
    check(errors([t.float() for t in inputs], cot))  # and the fp32 computation is the reference's


def test_without_states_and_chunk_invariance():
    inputs, _ = make_inputs(1, 90, 2, 16, 8, seed=3)
    q, k, v, g, beta, h0 = inputs
    o, ht = chunk_gated_delta_rule_torch(q, k, v, g, beta)
    assert ht is None
    assert rel_err(o, reference(q, k, v, g, beta)[0]) <= RTOL
    base, hb = chunk_gated_delta_rule_torch(q, k, v, g, beta, 0.3, h0, True)
    for cs in (1, 7, 32, 128):
        o, h = chunk_gated_delta_rule_torch(q, k, v, g, beta, 0.3, h0, True, chunk_size=cs)
        assert rel_err(o, base) <= RTOL and rel_err(h, hb) <= RTOL, cs
    o2, _ = chunk_gated_delta_rule_torch(q * 0.3 * 4, k, v, g, beta, initial_state=h0)  # K ** -0.5 = 1/4
    assert rel_err(o2, base) <= RTOL
    with pytest.raises(ValueError):
        chunk_gated_delta_rule_torch(q, k, v, g, beta, chunk_size=0)


def test_dispatch_on_cpu(monkeypatch):
    inputs, _ = make_inputs(1, 40, 2, 8, 8, seed=4)
    q, k, v, g, beta, h0 = inputs
    expected = chunk_gated_delta_rule_torch(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    for choice in (None, "auto", "torch", "kernel,torch:fla"):
        if choice is None:
            monkeypatch.delenv("STATEX_KERNELS", raising=False)
        else:
            monkeypatch.setenv("STATEX_KERNELS", choice)
        o, h = gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
        assert torch.equal(o, expected[0]) and torch.equal(h, expected[1])
    monkeypatch.setenv("STATEX_KERNELS", "bogus")
    with pytest.raises(ValueError):
        gated_delta_rule(q, k, v, g, beta)


def test_dispatch_passes_the_kernel_its_contract(monkeypatch):
    """Forced fla: the kernel gets g and beta in fla's positional order, the options as keywords and an fp32
    state; nothing in-kernel (gate, sigmoid, norm) is switched on."""
    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return "o", "state"

    monkeypatch.setitem(_dispatch.LOADERS, "gdn", lambda: fake)
    monkeypatch.setenv("STATEX_KERNELS", "fla")
    _dispatch._clear_cache()
    inputs, _ = make_inputs(1, 5, 1, 8, 8, seed=5)
    q, k, v, g, beta, h0 = inputs
    try:
        assert gated_delta_rule(q, k, v, g, beta, 0.5, h0.double(), True) == ("o", "state")
    finally:
        _dispatch._clear_cache()
    (args, kwargs), = calls
    assert all(a is b for a, b in zip(args, (q, k, v, g, beta))) and len(args) == 5
    assert kwargs.keys() == {"scale", "initial_state", "output_final_state"} and kwargs["scale"] == 0.5
    assert kwargs["initial_state"].dtype == torch.float32 and kwargs["output_final_state"] is True


INTERPRET_SCRIPT = PRELUDE + textwrap.dedent(
    '''
    from statex_dist.ops import _dispatch, chunk_gated_delta_rule_torch, gated_delta_rule

    calls = []
    kernel = _dispatch.LOADERS["gdn"]()
    def spy(*a, **k):
        calls.append(kernel.__name__)
        return kernel(*a, **k)
    _dispatch.LOADERS["gdn"] = lambda: spy

    torch.manual_seed(0)
    B, T, H, K, V = 1, 80, 2, 16, 32  # two chunks of 64, the second ragged
    inputs = dict(
        q=F.normalize(torch.randn(B, T, H, K), dim=-1), k=F.normalize(torch.randn(B, T, H, K), dim=-1),
        v=torch.randn(B, T, H, V), g=F.logsigmoid(torch.randn(B, T, H) + 2), beta=torch.rand(B, T, H),
        initial_state=torch.randn(B, H, K, V),
    )
    cot = (torch.randn(B, T, H, V), torch.randn(B, H, K, V))
    report = compare_paths(gated_delta_rule, chunk_gated_delta_rule_torch, inputs, cot, output_final_state=True)
    print("REPORT " + json.dumps(dict(report, calls=calls)))
    '''
)


@pytest.mark.interpret
def test_fla_chunk_gated_delta_rule_interpreted():
    """fla's Triton chunk_gated_delta_rule (forward and backward kernels) under TRITON_INTERPRET=1, fp32:
    every output and gradient within the interpreted tests' tolerance of the PyTorch path."""
    report = run_interpreted(INTERPRET_SCRIPT, kernels="fla")
    print(json.dumps(report, indent=1))
    assert report["calls"] == ["chunk_gated_delta_rule"], report["calls"]
    for name, err in report["errors"].items():
        assert err <= INTERPRET_TOL, (name, err)
