"""statex_dist.ops' kernel choice: resolved once per process, said in one line, never replaced silently.

The libraries' loaders are replaced by counting or failing fakes (no GPU here: the CUDA resolution runs on
device-type strings); one fresh subprocess imports mamba_ssm's Triton SSD for real, without its compiled
extension, and runs it interpreted on its first call.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from statex_dist import cli_errors
from statex_dist.ops import (KernelUnavailable, causal_conv1d, causal_conv1d_torch, kernel_summary,
                             resolve_kernels, ssd_scan)
from statex_dist.ops import _dispatch

REPO = Path(__file__).resolve().parents[1]
KERNELS = {"gla": "fla chunk_gla", "gdn": "fla chunk_gated_delta_rule", "ssd": "mamba_ssm mamba_chunk_scan_combined",
           "conv1d": "causal_conv1d causal_conv1d_fn"}


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    """Every test starts with nothing resolved or imported, under STATEX_KERNELS=auto."""
    monkeypatch.delenv("STATEX_KERNELS", raising=False)
    _dispatch._clear_cache()
    yield
    _dispatch._clear_cache()


def fake_loaders(monkeypatch, fail=()):
    """Counting loaders: each returns a sentinel kernel, or raises a missing-module error for ops in ``fail``."""
    counts = {op: 0 for op in _dispatch.OPS}

    def loader(op):
        def load():
            counts[op] += 1
            if op in fail:
                raise ModuleNotFoundError("No module named 'triton'", name="triton")
            return f"<{op} kernel>"
        return load

    for op in _dispatch.OPS:
        monkeypatch.setitem(_dispatch.LOADERS, op, loader(op))
    return counts


def test_cpu_under_auto_runs_pytorch_without_importing(monkeypatch):
    counts = fake_loaders(monkeypatch, fail=tuple(_dispatch.OPS))
    assert resolve_kernels("cpu") == {"gla": "torch", "gdn": "torch", "ssd": "torch", "conv1d": "torch"}
    assert counts == {"gla": 0, "gdn": 0, "ssd": 0, "conv1d": 0}


def test_each_library_is_imported_once(monkeypatch):
    counts = fake_loaders(monkeypatch)
    for _ in range(3):
        assert resolve_kernels("cuda") == KERNELS
    kernel_summary("cuda")
    assert _dispatch.kernel_for("ssd", "cuda") == "<ssd kernel>"
    monkeypatch.setenv("STATEX_KERNELS", "kernel")  # another setting and device type: same import
    assert resolve_kernels("cpu") == KERNELS
    assert counts == {"gla": 1, "gdn": 1, "ssd": 1, "conv1d": 1}


def test_a_failed_import_is_not_retried(monkeypatch):
    counts = fake_loaders(monkeypatch, fail=("ssd",))
    for _ in range(2):
        with pytest.raises(KernelUnavailable):
            resolve_kernels("cuda")
    assert counts["ssd"] == 1


def test_cuda_under_auto_without_the_kernel_is_an_error(monkeypatch):
    fake_loaders(monkeypatch, fail=("ssd",))
    with pytest.raises(KernelUnavailable) as e:
        resolve_kernels("cuda")
    msg = str(e.value)
    assert msg.startswith("ssd on cuda tensors runs mamba_ssm's mamba_chunk_scan_combined under STATEX_KERNELS=auto")
    assert "ModuleNotFoundError: No module named 'triton'" in msg
    assert "bash install.sh, which installs triton and mamba-ssm" in msg and "STATEX_KERNELS=torch" in msg and "ssd_scan_torch" in msg
    assert "gla" not in msg and "gdn" not in msg and "conv1d" not in msg  # only the op that failed
    # a model that does not call the op is not refused for it, and torch accepts the PyTorch path
    assert resolve_kernels("cuda", ("gla", "conv1d")) == {"gla": KERNELS["gla"], "conv1d": KERNELS["conv1d"]}
    monkeypatch.setenv("STATEX_KERNELS", "torch")
    assert resolve_kernels("cuda") == {"gla": "torch", "gdn": "torch", "ssd": "torch", "conv1d": "torch"}


def test_every_missing_kernel_is_named_at_once(monkeypatch):
    fake_loaders(monkeypatch, fail=("gla", "gdn", "conv1d"))
    with pytest.raises(KernelUnavailable) as e:
        resolve_kernels("cuda")
    msg = str(e.value)
    assert "gla on cuda tensors runs fla's chunk_gla" in msg and "pip install flash-linear-attention" in msg
    assert "gdn on cuda tensors runs fla's chunk_gated_delta_rule under" in msg
    assert "STATEX_KERNELS=torch:fla to run this op's PyTorch path (chunk_gated_delta_rule_torch)" in msg
    assert "conv1d on cuda tensors runs causal_conv1d's causal_conv1d_fn" in msg
    assert "STATEX_CUDA_EXTRAS=1 bash install.sh" in msg
    assert "ssd on" not in msg


def test_forcing_a_library_forces_its_op_only(monkeypatch):
    counts = fake_loaders(monkeypatch, fail=("ssd",))
    monkeypatch.setenv("STATEX_KERNELS", "fla")
    assert resolve_kernels("cpu") == {"gla": KERNELS["gla"], "gdn": KERNELS["gdn"], "ssd": "torch", "conv1d": "torch"}
    monkeypatch.setenv("STATEX_KERNELS", "mamba_ssm")
    with pytest.raises(KernelUnavailable, match=r"^STATEX_KERNELS=mamba_ssm makes ssd run mamba_ssm's "
                                                 r"mamba_chunk_scan_combined on cpu tensors"):
        resolve_kernels("cpu")
    assert counts == {"gla": 1, "gdn": 1, "ssd": 1, "conv1d": 0}


def test_one_op_on_its_pytorch_path(monkeypatch):
    """A GPU without causal-conv1d's CUDA build: torch:causal_conv1d runs the conv in PyTorch and keeps the
    scan's kernel, as the error's way out says; combined with a forced kernel, comma-separated."""
    fake_loaders(monkeypatch, fail=("conv1d",))
    with pytest.raises(KernelUnavailable, match="set STATEX_KERNELS=torch:causal_conv1d to run this op's PyTorch"):
        resolve_kernels("cuda", ("ssd", "conv1d"))
    monkeypatch.setenv("STATEX_KERNELS", "torch:causal_conv1d")
    assert resolve_kernels("cuda", ("ssd", "conv1d")) == {"ssd": KERNELS["ssd"], "conv1d": "torch"}
    assert kernel_summary("cuda", ("ssd", "conv1d")).endswith("conv1d=torch (STATEX_KERNELS=torch:causal_conv1d)")
    monkeypatch.setenv("STATEX_KERNELS", "kernel, torch:causal_conv1d")
    assert resolve_kernels("cpu") == {"gla": KERNELS["gla"], "gdn": KERNELS["gdn"], "ssd": KERNELS["ssd"],
                                      "conv1d": "torch"}
    monkeypatch.setenv("STATEX_KERNELS", "kernel,torch:fla")  # both of fla's ops on their PyTorch paths
    assert resolve_kernels("cuda", ("gla", "gdn", "ssd")) == {"gla": "torch", "gdn": "torch", "ssd": KERNELS["ssd"]}
    monkeypatch.setenv("STATEX_KERNELS", "torch:triton")
    with pytest.raises(ValueError, match="'torch:triton' is not one of"):
        resolve_kernels("cpu")


def test_kernel_summary_line(monkeypatch):
    fake_loaders(monkeypatch)
    assert kernel_summary("cpu") == "kernels: gla=torch, gdn=torch, ssd=torch, conv1d=torch (STATEX_KERNELS=auto)"
    monkeypatch.setenv("STATEX_KERNELS", "fla")
    assert kernel_summary("cpu", ("gla", "conv1d")) == "kernels: gla=fla chunk_gla, conv1d=torch (STATEX_KERNELS=fla)"
    assert kernel_summary("cpu", ("gdn",)) == "kernels: gdn=fla chunk_gated_delta_rule (STATEX_KERNELS=fla)"
    monkeypatch.setenv("STATEX_KERNELS", "auto")
    assert kernel_summary("cuda", ("ssd",)) == "kernels: ssd=mamba_ssm mamba_chunk_scan_combined (STATEX_KERNELS=auto)"


def test_bad_setting_or_op(monkeypatch):
    with pytest.raises(ValueError, match="unknown ops"):
        resolve_kernels("cpu", ("attention",))
    monkeypatch.setenv("STATEX_KERNELS", "cuda")
    with pytest.raises(ValueError, match="STATEX_KERNELS='cuda'"):
        resolve_kernels("cpu")


def test_ops_call_the_resolved_kernel(monkeypatch):
    """The op uses the cached resolution for its tensors' device type: the forced fake runs, loaded once."""
    calls = []
    loads = []

    def fake_scan(x, *args, **kwargs):
        calls.append(x.shape)
        return torch.full_like(x, 7.0)

    monkeypatch.setitem(_dispatch.LOADERS, "ssd", lambda: loads.append(1) or fake_scan)
    monkeypatch.setenv("STATEX_KERNELS", "mamba_ssm")
    x = torch.randn(1, 6, 2, 4)
    args = (torch.randn(1, 6, 2), -torch.rand(2), torch.randn(1, 6, 1, 4), torch.randn(1, 6, 1, 4), 4)
    for _ in range(3):
        assert torch.equal(ssd_scan(x, *args), torch.full_like(x, 7.0))
    assert len(calls) == 3 and loads == [1]


def test_forced_conv1d_is_unavailable_on_this_machine(monkeypatch):
    """causal_conv1d is CUDA-only: forcing it where its extension is not built is an error, not F.conv1d."""
    try:
        import causal_conv1d as package  # noqa: F401
        pytest.skip("causal_conv1d imports here (its CUDA extension is built)")
    except ImportError:
        pass
    x, w = torch.randn(1, 5, 3), torch.randn(3, 4)
    assert torch.equal(causal_conv1d(x, w), causal_conv1d_torch(x, w))  # auto on the CPU
    monkeypatch.setenv("STATEX_KERNELS", "kernel")
    with pytest.raises(KernelUnavailable) as e:
        causal_conv1d(x, w)
    assert "causal_conv1d_cuda" in str(e.value) and "STATEX_CUDA_EXTRAS=1 bash install.sh" in str(e.value)


def test_command_lines_print_it_as_one_line(capsys):
    def body(argv):
        raise KernelUnavailable("conv1d on cuda tensors runs causal_conv1d's causal_conv1d_fn ... instead.")
    assert cli_errors.run_main("prog", body, []) == cli_errors.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("prog: error: conv1d on cuda tensors") and err.count("\n") == 1


def test_cli_errors_imports_without_torch():
    code = "import sys, statex_dist.cli_errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


FIRST_CALL = textwrap.dedent(
    '''
    import contextlib, json, sys
    import torch
    from triton.runtime import autotuner
    # the interpreter's workarounds from tests/test_ops_interpret.py, without tests/mamba_cpu.py's stub of
    # selective_scan_cuda: mamba_ssm is imported here as a MAMBA_SKIP_CUDA_BUILD install has it
    _prune = autotuner.Autotuner.prune_configs
    autotuner.Autotuner.prune_configs = lambda self, kwargs: _prune(self, kwargs)[:1]
    torch.cuda.device = lambda *a, **k: contextlib.nullcontext()
    from statex_dist.ops import KernelUnavailable, resolve_kernels, ssd_scan, ssd_scan_torch
    from statex_dist.ops import _dispatch

    report = {}
    try:
        import selective_scan_cuda  # noqa: F401
        report["extension"] = True
    except ImportError:
        report["extension"] = False
    loads = []
    load = _dispatch.LOADERS["ssd"]
    _dispatch.LOADERS["ssd"] = lambda: loads.append(1) or load()
    torch.manual_seed(0)
    b, l, h, p, g, n = 1, 24, 2, 8, 1, 8
    kw = dict(x=torch.randn(b, l, h, p), dt=torch.randn(b, l, h) * 0.5, A=-torch.rand(h) - 0.2,
              B=torch.randn(b, l, g, n), C=torch.randn(b, l, g, n), chunk_size=16, dt_softplus=True)
    first, second = ssd_scan(**kw), ssd_scan(**kw)
    ref = ssd_scan_torch(**kw)
    report["err"] = ((first - ref).abs().max() / ref.abs().max()).item()
    report["same"] = torch.equal(first, second)
    report["loads"] = len(loads)
    again = load()  # the loader itself, a second time in the same process: the same function
    report["identical"] = again is _dispatch.kernel_for("ssd", "cpu")
    report["module"] = again.__module__
    try:
        import mamba_ssm  # noqa: F401  (its own import is left as it was)
        report["package"] = "imports"
    except ImportError as e:
        report["package"] = e.name
    try:
        resolve_kernels("cpu")
        report["resolve"] = "ok"
    except KernelUnavailable as e:
        report["resolve"] = str(e)
    print("REPORT " + json.dumps(report))
    '''
)


def test_mamba_ssd_first_call_in_a_fresh_process():
    """In a fresh process (STATEX_KERNELS=kernel, TRITON_INTERPRET=1) the first SSD call runs mamba_ssm's Triton
    kernel, the same function as later ones, with or without mamba_ssm's compiled extension."""
    env = dict(os.environ, TRITON_INTERPRET="1", STATEX_KERNELS="kernel", OMP_NUM_THREADS="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", FIRST_CALL], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    r = json.loads(lines[-1][len("REPORT "):])
    assert r["err"] <= 1e-4 and r["same"] and r["loads"] == 1, r
    assert r["identical"] and r["module"] == "mamba_ssm.ops.triton.ssd_combined", r
    # without the extension mamba_ssm's own import still fails as before: no half package is left behind
    assert r["package"] == ("imports" if r["extension"] else "selective_scan_cuda"), r
    # every op forced: fla (both its ops) and mamba_ssm import here, causal_conv1d (CUDA-only) does not
    assert r["resolve"].startswith("STATEX_KERNELS=kernel makes conv1d run causal_conv1d's causal_conv1d_fn"), r
    assert all(op not in r["resolve"] for op in ("gla", "gdn", "ssd")), r
