"""ssd_scan_torch against a token-by-token recurrence, and against transformers' Mamba2 mixer."""

import math

import pytest
import torch
import torch.nn.functional as F

from statex_dist.ops import KernelUnavailable, _dispatch, causal_conv1d, ssd_scan, ssd_scan_torch
from tests.conftest import rel_err

# max|a - b| / max|b|; ours runs in fp32, the reference recurrence in fp64 on the same inputs
RTOL = 1e-5


def recurrence(x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
               dt_limit=(0.0, math.inf), initial_states=None):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t^T B_t;  y_t = h_t C_t + D x_t (then * silu(z_t)). fp64."""
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    b, l, h, p = x.shape
    g, n = B.shape[-2:]
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    if dt_softplus:
        dt = F.softplus(dt)
    if tuple(dt_limit) != (0.0, math.inf):
        dt = dt.clamp(*dt_limit)
    Bh = B.repeat_interleave(h // g, dim=2)  # head i reads group i // (h // g)
    Ch = C.repeat_interleave(h // g, dim=2)
    state = x.new_zeros(b, h, p, n) if initial_states is None else initial_states.double()
    ys = []
    for t in range(l):
        state = (torch.exp(dt[:, t] * A)[..., None, None] * state
                 + dt[:, t, :, None, None] * x[:, t, :, :, None] * Bh[:, t, :, None, :])
        y = (state * Ch[:, t, :, None, :]).sum(-1)
        if D is not None:
            y = y + x[:, t] * (D.double()[:, None] if D.dim() == 1 else D.double())
        ys.append(y)
    y = torch.stack(ys, dim=1)
    if z is not None:
        y = y * F.silu(z.double())
    return y, state


def make_case(b, l, h, p, g, n, D_shape, with_z, seed=0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    t = dict(
        x=r(b, l, h, p),
        dt=r(b, l, h) * 0.5,
        A=-torch.rand(h, generator=gen) * 3 - 0.2,
        B=r(b, l, g, n),
        C=r(b, l, g, n),
        dt_bias=r(h) * 0.5 - 1,
        initial_states=r(b, h, p, n),
    )
    if D_shape == "h":
        t["D"] = r(h)
    elif D_shape == "hp":
        t["D"] = r(h, p)
    if with_z:
        t["z"] = r(b, l, h, p)
    cot = (r(b, l, h, p), r(b, h, p, n))
    return t, cot


def run(fn, tensors, cot, **kw):
    leaves = {k: v.clone().requires_grad_() for k, v in tensors.items()}
    y, state = fn(**leaves, **kw)
    names = list(leaves)
    grads = torch.autograd.grad((y * cot[0]).sum() + (state * cot[1]).sum(), [leaves[k] for k in names])
    return {"y": y, "final_state": state, **{"d" + k: gr for k, gr in zip(names, grads)}}


def ours(chunk_size):
    def fn(**kw):
        return ssd_scan_torch(chunk_size=chunk_size, return_final_states=True, **kw)
    return fn


@pytest.mark.parametrize(
    "b,l,h,p,g,n,chunk,D_shape,with_z",
    [
        (2, 37, 4, 8, 1, 16, 16, "h", True),  # l not a multiple of the chunk
        (1, 50, 4, 8, 2, 8, 16, "h", False),  # two groups
        (1, 48, 6, 4, 3, 8, 8, "hp", True),  # D per head and channel, whole chunks
        (2, 5, 2, 4, 2, 4, 16, None, False),  # l < chunk, no D
    ],
)
def test_matches_recurrence(b, l, h, p, g, n, chunk, D_shape, with_z):
    tensors, cot = make_case(b, l, h, p, g, n, D_shape, with_z)
    kw = dict(dt_softplus=True)
    got = run(ours(chunk), tensors, cot, **kw)
    ref = run(recurrence, tensors, cot, **kw)
    assert got.keys() == ref.keys()
    for name in ref:
        assert got[name].dtype == torch.float32
        assert rel_err(got[name], ref[name]) <= RTOL, (name, rel_err(got[name], ref[name]))


def test_dt_limit_and_no_softplus():
    tensors, cot = make_case(1, 30, 4, 4, 2, 8, "h", False, seed=1)
    tensors["dt"] = tensors["dt"].abs() * 0.2  # positive raw dt, no bias: usable without softplus
    tensors.pop("dt_bias")
    for kw in (dict(), dict(dt_softplus=True, dt_limit=(0.75, 0.9))):
        got = run(ours(8), tensors, cot, **kw)
        ref = run(recurrence, tensors, cot, **kw)
        for name in ref:
            assert rel_err(got[name], ref[name]) <= RTOL, (kw, name, rel_err(got[name], ref[name]))


def test_return_convention_and_dtype():
    tensors, _ = make_case(1, 20, 2, 4, 1, 4, "h", False, seed=2)
    tensors.pop("initial_states")
    y = ssd_scan_torch(chunk_size=8, **tensors)
    assert isinstance(y, torch.Tensor) and y.shape == tensors["x"].shape
    y_ref, _ = recurrence(**tensors)
    assert rel_err(y, y_ref) <= RTOL
    bf = {k: (v.bfloat16() if k in ("x", "B", "C") else v) for k, v in tensors.items()}
    y16, s16 = ssd_scan_torch(chunk_size=8, return_final_states=True, **bf)
    assert y16.dtype == torch.bfloat16 and s16.dtype == torch.float32


def test_dispatch_on_cpu(monkeypatch):
    tensors, _ = make_case(1, 20, 2, 4, 1, 4, "h", False, seed=3)
    expected = ssd_scan_torch(chunk_size=8, **tensors)
    monkeypatch.delenv("STATEX_KERNELS", raising=False)
    assert torch.equal(ssd_scan(chunk_size=8, **tensors), expected)
    monkeypatch.setenv("STATEX_KERNELS", "torch")
    assert torch.equal(ssd_scan(chunk_size=8, **tensors), expected)

    def missing():
        raise ModuleNotFoundError("No module named 'triton'", name="triton")

    monkeypatch.setitem(_dispatch.LOADERS, "ssd", missing)
    monkeypatch.setattr(_dispatch, "_imported", {})  # forget an earlier test's import of the real kernel
    monkeypatch.setattr(_dispatch, "_resolved", {})
    monkeypatch.setenv("STATEX_KERNELS", "mamba_ssm")  # forced but missing: an error, no fallback
    with pytest.raises(KernelUnavailable, match="No module named 'triton'"):
        ssd_scan(chunk_size=8, **tensors)


# ---------------------------------------------------------------------------------------------
# transformers' Mamba2Mixer (its pure-PyTorch path on the CPU) rebuilt from statex_dist.ops


def mixer_via_ops(m, hidden):
    """Mamba2Mixer's forward from its own weights: in_proj, conv, SSD scan, gated norm, out_proj."""
    b, l, _ = hidden.shape
    zxbcdt = m.in_proj(hidden)
    z, xBC, dt = zxbcdt.split([m.intermediate_size, m.conv_dim, m.num_heads], dim=-1)
    xBC = causal_conv1d(xBC, m.conv1d.weight.squeeze(1), m.conv1d.bias, activation="silu")
    x, B, C = xBC.split([m.intermediate_size, m.n_groups * m.ssm_state_size, m.n_groups * m.ssm_state_size], -1)
    y = ssd_scan_torch(
        x.reshape(b, l, m.num_heads, m.head_dim),
        dt,
        -torch.exp(m.A_log.float()),
        B.reshape(b, l, m.n_groups, m.ssm_state_size),
        C.reshape(b, l, m.n_groups, m.ssm_state_size),
        chunk_size=m.chunk_size,
        D=m.D,
        dt_bias=m.dt_bias,
        dt_softplus=True,
        dt_limit=m.time_step_limit,
    )
    y = m.norm(y.reshape(b, l, -1), z)  # gated RMSNorm: norm(y * silu(z)) per group
    return m.out_proj(y)


@pytest.mark.parametrize("n_groups", [1, 2])
def test_matches_transformers_mamba2_mixer(n_groups):
    transformers = pytest.importorskip("transformers")
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    torch.manual_seed(0)
    cfg = transformers.Mamba2Config(
        hidden_size=64, expand=2, head_dim=16, num_heads=8, state_size=16, n_groups=n_groups,
        chunk_size=8, conv_kernel=4, num_hidden_layers=1, vocab_size=32,
    )
    m = Mamba2Mixer(cfg, layer_idx=0).float().eval()
    with torch.no_grad():  # make D and the norm weight non-trivial
        m.D.normal_()
        m.norm.weight.normal_()
    hidden = torch.randn(2, 21, 64)  # 21: not a multiple of the chunk

    h1 = hidden.clone().requires_grad_()
    ref_forward = getattr(m, "torch_forward", m.forward)  # transformers < 5 named it torch_forward
    ref = ref_forward(h1)
    ref_grads = torch.autograd.grad(ref.square().sum(), [h1, m.A_log, m.dt_bias, m.conv1d.weight])

    h2 = hidden.clone().requires_grad_()
    got = mixer_via_ops(m, h2)
    got_grads = torch.autograd.grad(got.square().sum(), [h2, m.A_log, m.dt_bias, m.conv1d.weight])

    assert rel_err(got, ref) <= RTOL, rel_err(got, ref)
    for name, a, b in zip(["hidden", "A_log", "dt_bias", "conv"], got_grads, ref_grads):
        assert rel_err(a, b) <= RTOL, (name, rel_err(a, b))
