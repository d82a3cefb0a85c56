"""The CUDA code paths of the dispatch (fla / mamba_ssm Triton kernels, causal_conv1d's entry point) run on
CPU tensors under TRITON_INTERPRET=1 and compared with the PyTorch paths, and mamba_ssm's own
MambaLMHeadModel reads a checkpoint this project writes in its format. Opt-in (``pytest -m interpret``):
slow. mamba_ssm and causal-conv1d are in the default install (without their CUDA extensions), so nothing
here skips; their CPU import workarounds are in tests/mamba_cpu.py.

TRITON_INTERPRET must be set before triton is imported, so every check runs in a fresh subprocess,
and the two interpreter workarounds below are applied inside that subprocess only:

- Triton's autotuner benchmarks its configs with the GPU driver's benchmarker ("0 active drivers"
  on a CPU machine): keep only the first config, so nothing is benchmarked.
- the interpreter runs kernels as Python, so in ``for i_t in range(NT)`` the loop variable is a
  plain int and fla's ``i_t.to(tl.int64)`` fails: its AST rewriter is extended to turn loop
  variables into interpreter tensors, as it already does for assignments.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.interpret

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4  # max|a - b| / max|b|, Triton kernel (interpreted) against the PyTorch path

PRELUDE = textwrap.dedent(
    '''
    import ast, json, math, os, time
    assert os.environ["TRITON_INTERPRET"] == "1"
    import torch
    import torch.nn.functional as F
    from triton.runtime import autotuner, interpreter

    from tests.conftest import rel_err

    _prune = autotuner.Autotuner.prune_configs
    autotuner.Autotuner.prune_configs = lambda self, kwargs: _prune(self, kwargs)[:1]

    def _visit_for(self, node):
        node = self.generic_visit(node)
        if isinstance(node.target, ast.Name):
            name = node.target.id
            as_tensor = ast.Call(
                func=ast.Attribute(value=ast.Name(id="interpreter_semantic", ctx=ast.Load()),
                                   attr="to_tensor", ctx=ast.Load()),
                args=[ast.Name(id=name, ctx=ast.Load()), ast.Constant(value=False)], keywords=[])
            assign = ast.Assign(targets=[ast.Name(id=name, ctx=ast.Store())], value=as_tensor)
            node.body.insert(0, ast.copy_location(assign, node))
        return node

    interpreter.ASTTransformer.visit_For = _visit_for

    def compare(fn, ref, inputs, cotangents):
        """Outputs and gradients of fn and ref on the same leaves; returns {name: rel_err}."""
        results = []
        for f in (fn, ref):
            leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
            outs = f(**leaves)
            loss = sum((o * c).sum() for o, c in zip(outs, cotangents))
            grads = torch.autograd.grad(loss, list(leaves.values()))
            results.append(dict(zip(["out", "final_state"], outs), **{"d" + k: g for k, g in zip(leaves, grads)}))
        return {k: rel_err(results[0][k], results[1][k]) for k in results[1]}

    def compare_paths(fn, ref, inputs, cotangents, **kw):
        """compare() of fn and ref, both called with the keywords kw; the errors and the seconds taken."""
        t0 = time.time()
        errs = compare(lambda **t: fn(**t, **kw), lambda **t: ref(**t, **kw), inputs, cotangents)
        return dict(errors=errs, seconds=round(time.time() - t0, 1))
    '''
)

GLA_SCRIPT = PRELUDE + textwrap.dedent(
    '''
    from statex_dist.ops import _dispatch, chunk_gla_torch, gla_attention

    calls = []
    chunk_gla, fused_recurrent_gla = _dispatch.LOADERS["gla"]()
    def spy(name, f):
        def wrapped(*a, **k):
            calls.append(name)
            return f(*a, **k)
        return wrapped
    _dispatch.LOADERS["gla"] = lambda: (spy("chunk_gla", chunk_gla), spy("fused_recurrent_gla", fused_recurrent_gla))

    report = {}
    torch.manual_seed(0)
    B, H, K, V = 1, 2, 32, 16
    for T in (128, 40):  # chunk_gla, then fused_recurrent_gla (T <= 64)
        inputs = dict(
            q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V),
            g=F.logsigmoid(torch.randn(B, T, H, K)) / 16, initial_state=torch.randn(B, H, K, V),
        )
        cot = (torch.randn(B, T, H, V), torch.randn(B, H, K, V))
        report[f"T={T}"] = compare_paths(gla_attention, chunk_gla_torch, inputs, cot, output_final_state=True)
    report["calls"] = calls
    print("REPORT " + json.dumps(report))
    '''
)

SSD_SCRIPT = PRELUDE + textwrap.dedent(
    '''
    from tests.mamba_cpu import install
    install()  # mamba_ssm's CPU import workarounds, this process only
    from statex_dist.ops import _dispatch, ssd_scan, ssd_scan_torch
    assert _dispatch.kernel_for("ssd", "cpu") is not None, "mamba_chunk_scan_combined is not forced"

    report = {}
    torch.manual_seed(0)
    b, l, h, p, g, n, chunk = 1, 100, 4, 16, 2, 16, 32  # l not a multiple of the chunk
    inputs = dict(
        x=torch.randn(b, l, h, p), dt=torch.randn(b, l, h) * 0.5, A=-torch.rand(h) * 3 - 0.2,
        B=torch.randn(b, l, g, n), C=torch.randn(b, l, g, n), D=torch.randn(h),
        z=torch.randn(b, l, h, p), dt_bias=torch.randn(h) * 0.5 - 1, initial_states=torch.randn(b, h, p, n),
    )
    cot = (torch.randn(b, l, h, p), torch.randn(b, h, p, n))
    t0 = time.time()
    kw = dict(chunk_size=chunk, dt_softplus=True, return_final_states=True)
    errs = compare(lambda **t: ssd_scan(**t, **kw), lambda **t: ssd_scan_torch(**t, **kw), inputs, cot)
    report["ssd"] = dict(errors=errs, seconds=round(time.time() - t0, 1))
    print("REPORT " + json.dumps(report))
    '''
)

CONV_SCRIPT = PRELUDE + textwrap.dedent(
    '''
    from tests.mamba_cpu import install
    install()  # causal_conv1d_fn -> causal_conv1d_ref, the package's own reference
    from causal_conv1d.causal_conv1d_interface import causal_conv1d_ref
    from statex_dist.ops import _dispatch, causal_conv1d, causal_conv1d_torch
    assert _dispatch.kernel_for("conv1d", "cpu") is causal_conv1d_ref, "causal_conv1d_fn is not the one patched"

    report = {}
    torch.manual_seed(0)
    B, T, D, W = 2, 37, 24, 4
    cases = {"plain": dict(x=torch.randn(B, T, D), weight=torch.randn(D, W), bias=torch.randn(D)),
             "state": dict(x=torch.randn(B, T, D), weight=torch.randn(D, W), bias=torch.randn(D),
                           initial_state=torch.randn(B, D, W - 1))}
    for name, inputs in cases.items():
        final = "initial_state" in inputs
        cot = (torch.randn(B, T, D),) + ((torch.randn(B, D, W - 1),) if final else ())
        def run(f, **kw):
            out = f(**kw, activation="silu", return_final_state=final)
            return out if final else (out,)
        report[name] = dict(errors=compare(lambda **kw: run(causal_conv1d, **kw),
                                           lambda **kw: run(causal_conv1d_torch, **kw), inputs, cot))
    print("REPORT " + json.dumps(report))
    '''
)

MAMBA_MODEL_SCRIPT = PRELUDE + textwrap.dedent(
    '''
    import dataclasses, tempfile
    from pathlib import Path
    from tests.mamba_cpu import install
    install()
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel
    from statex_dist.api import load_model
    from statex_dist.checkpoint.hf_export import write_hf
    from statex_dist.archs.mamba2.config import Mamba2Config
    from statex_dist.archs.mamba2.mamba_ssm_format import MambaSSM
    from statex_dist.models import specs_for
    from tests.parallel_cases import reference_weights

    report = {}
    for name, ngroups in (("g1", 1), ("g2", 2)):
        config = Mamba2Config(vocab_size=100, hidden_size=64, num_layers=2, d_state=16, headdim=16,
                              ngroups=ngroups, chunk_size=16, tie_word_embeddings=True, pad_vocab_multiple=8)
        full = reference_weights(config, seed=3)  # the scheme's init, norms / D / biases moved off their constants
        folder = Path(tempfile.mkdtemp())
        write_hf(folder, MambaSSM, config, ((n, full[n]) for n in specs_for(config, 1)),
                 {n: torch.float32 for n in full})
        cfg = json.loads((folder / "config.json").read_text())
        fields = {f.name for f in dataclasses.fields(MambaConfig)}
        kw = {k: v for k, v in cfg.items() if k in fields}
        # the memory-efficient path fuses the conv into causal_conv1d's CUDA op; the plain path runs the same
        # Triton SSD scan and gated norm, with the conv through causal_conv1d_fn (its reference here)
        kw["ssm_cfg"] = dict(kw["ssm_cfg"], use_mem_eff_path=False)
        theirs = MambaLMHeadModel(MambaConfig(**kw))
        theirs.load_state_dict(torch.load(folder / "pytorch_model.bin"), strict=True)
        ids = torch.randint(0, 100, (2, 40), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = theirs(ids).logits[..., :100]
            ours = load_model(folder)(ids)
        report[name] = dict(errors={"logits": rel_err(ours, ref)}, scale=ref.abs().max().item())
    print("REPORT " + json.dumps(report))
    '''
)


def run_interpreted(script: str, kernels: str, timeout: int = 300) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", STATEX_KERNELS=kernels, OMP_NUM_THREADS="2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, f"subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(lines[-1][len("REPORT "):])


def test_fla_gla_kernels_interpreted():
    pytest.importorskip("fla")
    report = run_interpreted(GLA_SCRIPT, kernels="fla")
    print(json.dumps(report, indent=1))
    assert report["calls"] == ["chunk_gla", "fused_recurrent_gla"], report["calls"]
    for case in ("T=128", "T=40"):
        for name, err in report[case]["errors"].items():
            assert err <= TOL, (case, name, err)


def test_mamba_ssd_kernel_interpreted():
    report = run_interpreted(SSD_SCRIPT, kernels="mamba_ssm", timeout=400)
    print(json.dumps(report, indent=1))
    for name, err in report["ssd"]["errors"].items():
        assert err <= TOL, (name, err)


def test_causal_conv1d_dispatch_against_reference():
    """statex_dist.ops.conv's kernel path (layouts, channels-last state) around causal_conv1d's reference."""
    report = run_interpreted(CONV_SCRIPT, kernels="causal_conv1d")
    print(json.dumps(report, indent=1))
    for case, r in report.items():
        for name, err in r["errors"].items():
            assert err <= TOL, (case, name, err)


def test_mamba_ssm_model_loads_our_checkpoint():
    """A checkpoint written in mamba_ssm's format (statex_dist.archs.mamba2.mamba_ssm_format), loaded into
    mamba_ssm's own MambaLMHeadModel (Triton SSD, gated norm and fused add-norm, interpreted): its logits
    equal load_model's (the PyTorch paths)."""
    report = run_interpreted(MAMBA_MODEL_SCRIPT, kernels="torch", timeout=600)
    print(json.dumps(report, indent=1))
    for case, r in report.items():
        assert r["errors"]["logits"] <= TOL, (case, r)
