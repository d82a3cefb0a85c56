"""The prepared check for one lent GPU (run through benchmarks/gpu.sh): one PASS / FAIL / SKIP line per item,
then a summary; on a machine without CUDA the CUDA items say "skipped: no GPU" and the rest run on the CPU.
The whole check, builds included, has 6 minutes (``--budget``): an item that would not fit in what is left
is skipped with its reason, and every figure goes to ``$OUT/gpu_bench.json``.

Items:
- kernels-*: the CUDA dispatch (fla chunk_gla and chunk_gated_delta_rule, mamba_ssm mamba_chunk_scan_combined,
  causal_conv1d_fn) against
  the PyTorch paths on the same GPU inputs, fp32 and bf16, outputs, final states and every input gradient.
  Each item forces its kernel (``STATEX_KERNELS``): a kernel that does not import is a FAIL, never PyTorch
  compared with PyTorch. GLA at GLA-340M heads (4 x 128 x 256) and a merged 1-head layer of GLA-1.3B (key
  dim 1024, value 2048); Gated DeltaNet at fla's 1.3B heads (6 x 256 x 512) and their merged 1-head layer.
  The reference runs in fp32 on the same (for bf16: bf16-rounded) inputs, so the error
  is the kernel's own. Bounds, max|a - b| / max|b|: fp32 1e-2 (Triton's fp32 dots run in TF32, 10-bit
  mantissa, on Hopper), bf16 5e-2 (bf16 inputs to the dots, 8-bit mantissa, fp32 accumulation); the
  measured errors are printed.
- train-gla, train-gdn, train-mamba2: the product itself, ``NPROC=1 bash launch/train.sh configs/cpu-ARCH-tiny.yaml``
  through DeepSpeed's launcher, 3 bf16 steps of the tiny model with its StateX-expanded layer 0 (GLA heads
  merged; Mamba2 d_state 16 -> 64), evaluation and a checkpoint, kernels forced on CUDA
  (``STATEX_KERNELS=kernel``). It fails unless the run's first line names the device, the backend (NCCL on
  a GPU), bf16 and the kernel of every op the model uses. The Mamba2 run waits for the causal_conv1d build.
- throughput-*: GLA-340M and Mamba2-370m shapes, 4K context, bf16, forward + backward + AdamW: tokens/s and
  MFU (statex_dist.training.flops against the card's dense bf16 peak).
- memory-GLA-1.3B-64K: one training step at 64K context with activation checkpointing: peak memory.
- generate-export: a StateX export of a GLA (layer 0 merged to 1 head, so the remote code), loaded with
  AutoModelForCausalLM(trust_remote_code=True) on the device: its logits against load_model's (the fla
  kernels on CUDA), and greedy generate with the recurrent cache equal to generate over the whole prefix.

The items that need causal_conv1d's CUDA extension (built by gpu.sh meanwhile, for this GPU only) run last,
in a process of their own that imports the built extension (``--phase conv``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}   # dense, per the vendors' data sheets
TOL = {torch.float32: 1e-2, torch.bfloat16: 5e-2}
CUDA = torch.cuda.is_available()
CONV_BUILD = Path(os.environ.get("STATEX_CONV_BUILD", "/tmp/statex_conv_build"))
T0 = time.time()


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def compare(fn, ref, inputs: dict, dtype, fp32=("A", "initial_state", "initial_states")) -> dict:
    """Outputs and input gradients of ``fn`` (on ``dtype`` leaves) and ``ref`` (fp32 copies): {name: rel err}.

    The leaves named in ``fp32`` stay fp32 for both, as the models pass them (A = -exp(A_log.float()), states).
    """
    res = []
    for f, dt in ((fn, dtype), (ref, torch.float32)):
        leaves = {k: (v if k in fp32 else v.to(dtype).to(dt)).requires_grad_() for k, v in inputs.items()}
        outs = f(**leaves)
        torch.manual_seed(1)
        loss = sum((o.float() * torch.randn_like(o, dtype=torch.float32)).sum() for o in outs)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        res.append({**{f"out{i}": o for i, o in enumerate(outs)}, **{"d" + k: g for k, g in zip(leaves, grads)}})
    return {k: rel(res[0][k], res[1][k]) for k in res[1]}


def _verdict(errs: dict, dtype) -> tuple[bool, str]:
    worst = max(errs, key=errs.get)
    return errs[worst] <= TOL[dtype], f"max err {errs[worst]:.1e} ({worst}), bound {TOL[dtype]:.0e}"


def kernels_gla(dtype):
    from statex_dist.ops import chunk_gla_torch, gla_attention
    torch.manual_seed(0)
    errs = {}
    for label, (B, T, H, K, V) in {"340M": (2, 1024, 4, 128, 256), "merged-1h": (1, 1024, 1, 1024, 2048)}.items():
        d = dict(device="cuda")
        inputs = dict(q=torch.randn(B, T, H, K, **d), k=torch.randn(B, T, H, K, **d), v=torch.randn(B, T, H, V, **d),
                      g=torch.nn.functional.logsigmoid(torch.randn(B, T, H, K, **d)) / 16,
                      initial_state=torch.randn(B, H, K, V, **d))
        scale = K ** -0.5
        e = compare(lambda **t: gla_attention(**t, scale=scale, output_final_state=True),
                    lambda **t: chunk_gla_torch(**t, scale=scale, output_final_state=True), inputs, dtype)
        errs.update({f"{label}:{k}": v for k, v in e.items()})
    return _verdict(errs, dtype)


def kernels_gdn(dtype):
    from statex_dist.ops import chunk_gated_delta_rule_torch, gated_delta_rule
    torch.manual_seed(0)
    errs = {}
    # fla's 1.3B defaults (6 heads of d_k 256, expand_v 2) and a merged 1-head layer of them
    for label, (B, T, H, K, V) in {"1.3B": (2, 1024, 6, 256, 512), "merged-1h": (1, 1024, 1, 1536, 3072)}.items():
        d = dict(device="cuda")
        nrm = torch.nn.functional.normalize
        inputs = dict(q=nrm(torch.randn(B, T, H, K, **d), dim=-1), k=nrm(torch.randn(B, T, H, K, **d), dim=-1),
                      v=torch.randn(B, T, H, V, **d), g=torch.nn.functional.logsigmoid(torch.randn(B, T, H, **d)) / 8,
                      beta=torch.rand(B, T, H, **d), initial_state=torch.randn(B, H, K, V, **d))
        scale = K ** -0.5
        e = compare(lambda **t: gated_delta_rule(**t, scale=scale, output_final_state=True),
                    lambda **t: chunk_gated_delta_rule_torch(**t, scale=scale, output_final_state=True), inputs, dtype)
        errs.update({f"{label}:{k}": v for k, v in e.items()})
    return _verdict(errs, dtype)


def kernels_ssd(dtype):
    from statex_dist.ops import ssd_scan, ssd_scan_torch
    torch.manual_seed(0)
    b, l, h, p, g, n = 2, 1000, 32, 64, 1, 128   # Mamba2-370m heads; l not a multiple of the chunk
    d = dict(device="cuda")
    inputs = dict(x=torch.randn(b, l, h, p, **d), dt=torch.randn(b, l, h, **d) * 0.5, A=-torch.rand(h, **d) * 3 - 0.2,
                  B=torch.randn(b, l, g, n, **d), C=torch.randn(b, l, g, n, **d), D=torch.randn(h, **d),
                  dt_bias=torch.randn(h, **d) * 0.5 - 1, initial_states=torch.randn(b, h, p, n, **d))
    kw = dict(chunk_size=256, dt_softplus=True, return_final_states=True)
    errs = compare(lambda **t: ssd_scan(**t, **kw), lambda **t: ssd_scan_torch(**t, **kw), inputs, dtype)
    return _verdict(errs, dtype)


def kernels_conv(dtype):
    """causal_conv1d_fn (the extension gpu.sh built, imported by the --phase conv process) against F.conv1d."""
    from statex_dist.ops import causal_conv1d, causal_conv1d_torch
    torch.manual_seed(0)
    B, T, D, W = 2, 1000, 2304, 4   # Mamba2-370m's conv channels: d_inner + 2 * d_state
    d = dict(device="cuda")
    errs = {}
    for label, extra in {"plain": {}, "state": {"initial_state": torch.randn(B, D, W - 1, **d)}}.items():
        inputs = dict(x=torch.randn(B, T, D, **d), weight=torch.randn(D, W, **d) / 2, bias=torch.randn(D, **d), **extra)
        final = bool(extra)

        def run(f, **t):
            out = f(**t, activation="silu", return_final_state=final)
            return out if final else (out,)
        e = compare(lambda **t: run(causal_conv1d, **t), lambda **t: run(causal_conv1d_torch, **t), inputs, dtype)
        errs.update({f"{label}:{k}": v for k, v in e.items()})
    return _verdict(errs, dtype)


def conv_build_status(deadline: float) -> str:
    """"ok" once gpu.sh's build of causal_conv1d_cuda is done, waiting for it until ``deadline``."""
    marker = CONV_BUILD / "status"
    while CUDA and not marker.exists() and time.time() < deadline:
        time.sleep(2)
    return marker.read_text().strip() if marker.exists() else "still building"


def conv_env() -> dict:
    """PYTHONPATH entries that make the built extension and its Python package importable as installed."""
    src = next((CONV_BUILD / "src").glob("causal_conv1d-*"))
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(CONV_BUILD), str(src), os.environ.get("PYTHONPATH")]))}


def build_conv(src_tar: str) -> None:
    """JIT-build causal_conv1d's CUDA extension for this GPU only (its setup.py builds for 8 architectures)."""
    import tarfile

    from torch.utils.cpp_extension import load
    CONV_BUILD.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(src_tar) as t:
            t.extractall(CONV_BUILD / "src")
        csrc = next((CONV_BUILD / "src").glob("causal_conv1d-*")) / "csrc"
        major, minor = torch.cuda.get_device_capability()
        load("causal_conv1d_cuda", [str(csrc / f) for f in ("causal_conv1d.cpp", "causal_conv1d_fwd.cu",
                                                             "causal_conv1d_bwd.cu", "causal_conv1d_update.cu")],
             build_directory=str(CONV_BUILD), extra_cflags=["-O3"],
             extra_cuda_cflags=["-O3", "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                                "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                                "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
                                "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math",
                                f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"])
        (CONV_BUILD / "status").write_text("ok")
    except Exception as e:
        (CONV_BUILD / "status").write_text(f"build failed: {str(e).splitlines()[-1] if str(e) else type(e).__name__}")
        raise


# what the first line of a run must name, per architecture, on a GPU (kernels forced) and on the CPU
FIRST_LINE = {
    "gla": {True: ["backend nccl", "dtype bf16", "gla=fla"], False: ["dtype bf16", "gla=torch"]},
    "mamba2": {True: ["backend nccl", "dtype bf16", "ssd=mamba_ssm", "conv1d=causal_conv1d"],
               False: ["dtype bf16", "ssd=torch", "conv1d=torch"]},
    "gdn": {True: ["backend nccl", "dtype bf16", "gdn=fla"], False: ["dtype bf16", "gdn=torch"]},
}


def train_product(arch: str, workdir: Path, timeout: float):
    """``NPROC=1 bash launch/train.sh configs/cpu-ARCH-tiny.yaml`` for 3 bf16 steps, kernels forced on CUDA."""
    from tests.train_helpers import make_shards
    shards = make_shards(workdir / "data")
    ov = [f"data.train={shards}", f"data.valid={shards}", "data.seq_len=64", f"logging.dir={workdir / arch}",
          "model.dtype=bf16", "schedule.total_steps=3", "schedule.warmup_steps=1", "checkpoint.every=3",
          "eval.tasks=[ppl]", "logging.every=1"]
    if arch in ("gla", "gdn"):
        ov.append("model.config.use_short_conv=false")   # fla alone: it need not wait for the conv build
    env = dict(os.environ, NPROC="1", MASTER_PORT=str(29517 + len(arch)), PYTHON=sys.executable,
               STATEX_KERNELS="kernel" if CUDA else "auto")
    proc = subprocess.run(["bash", "launch/train.sh", f"configs/cpu-{arch}-tiny.yaml", *ov], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    said = [ln.split("] ", 1)[1] for ln in proc.stdout.splitlines() if ln.startswith("[statex-dist] ")]
    if proc.returncode or not said or not said[-1].startswith("done:"):
        return False, f"exit {proc.returncode}: {(proc.stderr or proc.stdout)[-1200:]}"
    missing = [w for w in FIRST_LINE[arch][CUDA] if w not in said[0]]
    ckpt = sorted((workdir / arch / "checkpoints").glob("step*"))
    if missing or not ckpt:
        return False, f"first line {said[0]!r} lacks {missing}" if missing else "no checkpoint written"
    return True, f"{said[0]} -> {said[-1]}; checkpoint {ckpt[-1].name}"


def _gla_config(size: str):
    from statex_dist.archs.gla.config import GLAConfig
    hidden, layers = {"340M": (1024, 24), "1.3B": (2048, 24)}[size]
    return GLAConfig(vocab_size=32000, hidden_size=hidden, num_layers=layers, num_heads=4)


def _train_steps(cfg, T: int, batch: int, steps: int, checkpointing: bool = False):
    """Median seconds of a bf16 forward + backward + AdamW step, and the peak GPU memory in GiB."""
    from statex_dist.models import build_model
    model = build_model(cfg, dtype=torch.bfloat16).cuda().train()
    model.activation_checkpointing = checkpointing
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (batch, T), device="cuda")
    torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 1):   # the first step compiles and autotunes: not timed
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(ids, labels=ids)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    assert torch.isfinite(loss), loss
    del model, opt
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated() / 2 ** 30


def throughput(label: str, T: int = 4096, batch: int = 4, steps: int = 3):
    from statex_dist.archs.mamba2.config import Mamba2Config
    from statex_dist.training.flops import train_flops_per_token
    cfg = _gla_config("340M") if label == "GLA-340M" else Mamba2Config(
        vocab_size=50288, hidden_size=1024, num_layers=48, d_state=128, headdim=64, tie_word_embeddings=True)
    t, mem = _train_steps(cfg, T, batch, steps)
    tps = batch * T / t
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    flops = train_flops_per_token(cfg) * tps
    mfu = f"MFU {flops / peak:.1%}" if peak else "MFU n/a (unknown card)"
    torch.cuda.empty_cache()
    return True, f"{tps:,.0f} tok/s, {flops / 1e12:.0f} TFLOP/s, {mfu}, peak {mem:.1f} GiB ({name}, B={batch} T={T})"


def memory_gla_64k():
    t, mem = _train_steps(_gla_config("1.3B"), 65536, 1, 1, checkpointing=True)
    torch.cuda.empty_cache()
    return True, f"peak {mem:.1f} GiB, step {t:.1f} s (B=1, T=65536, activation checkpointing)"


def memory_per_token():
    """The bytes a token of a bf16 training step on the card, from the peaks at T = 4K and 16K of GLA-340M's width
    with 4 layers (B=1): what benchmarks/context_parallel.py's modelled 1.3B table takes from the CPU's figures."""
    from statex_dist.archs.gla.config import GLAConfig
    cfg = GLAConfig(vocab_size=32000, hidden_size=1024, num_layers=4, num_heads=4, use_short_conv=True)
    peaks = {T: _train_steps(cfg, T, 1, 1)[1] for T in (4096, 16384)}
    per = (peaks[16384] - peaks[4096]) * 2 ** 30 / (16384 - 4096)
    torch.cuda.empty_cache()
    return True, (f"{per / 4 / 1e3:,.1f} KB a token and layer (GLA, hidden 1024, bf16; the CPU path in fp32: 327); peak "
                  f"{peaks[4096]:.2f} GiB at T=4K, {peaks[16384]:.2f} GiB at 16K")


def generate_export(workdir: Path):
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForCausalLM

    from statex_dist import load_model
    from statex_dist.reshard import run
    from tests.fla_reference import make_fla_gla
    make_fla_gla(workdir / "fla", use_short_conv=True)
    dst = workdir / "export"   # layer 0 merged to 1 head, layer 1 keeps 4: the StateX remote code
    run(["--src", str(workdir / "fla"), "--dst", str(dst), "--format", "hf", "--expand-layers", "0", "--init", "merge"])
    dev = "cuda" if CUDA else "cpu"
    remote = AutoModelForCausalLM.from_pretrained(dst, trust_remote_code=True).to(dev).eval()
    remote.generation_config.eos_token_id = None   # random weights: always run to max_new_tokens
    prompt = torch.randint(0, 101, (2, 16), generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        err = rel(remote(prompt).logits, load_model(dst).to(dev)(prompt))
    cached = remote.generate(prompt, max_new_tokens=16, do_sample=False, use_cache=True)
    whole = remote.generate(prompt, max_new_tokens=16, do_sample=False, use_cache=False)
    same = torch.equal(cached, whole)
    return same and err <= TOL[torch.float32], (
        f"{dev}: {type(remote).__name__}, 2 x 16 tokens, recurrent cache {'equals' if same else 'DIFFERS from'} "
        f"the whole prefix; logits vs load_model {err:.1e} (bound {TOL[torch.float32]:.0e})")


def forced(library: str, thunk):
    """``thunk`` with ``STATEX_KERNELS=library``: the dispatch raises rather than use the PyTorch path."""
    def run(workdir, left):
        before = os.environ.get("STATEX_KERNELS")
        os.environ["STATEX_KERNELS"] = library
        try:
            return thunk()
        finally:
            os.environ.pop("STATEX_KERNELS") if before is None else os.environ.update(STATEX_KERNELS=before)
    return run


# (name, needs CUDA, seconds it needs on a GPU (a guess, for the budget), thunk(workdir, seconds left)),
# in running order; the conv phase runs in its own process once the extension is built
def items(phase: str):
    tags = {torch.float32: "float32", torch.bfloat16: "bfloat16"}
    if phase == "main":
        out = [(f"kernels-{op}-{tags[dt]}", True, 30, forced(lib, lambda f=f, dt=dt: f(dt)))
               for dt in tags for op, lib, f in (("gla", "fla", kernels_gla), ("gdn", "fla", kernels_gdn),
                                                 ("ssd", "mamba_ssm", kernels_ssd))]
        return out + [
            ("train-gla", False, 60, lambda w, left: train_product("gla", w, left)),
            ("train-gdn", False, 60, lambda w, left: train_product("gdn", w, left)),
            ("generate-export", False, 30, lambda w, left: generate_export(w)),
            ("throughput-GLA-340M", True, 40, lambda w, left: throughput("GLA-340M")),
            ("memory-per-token-GLA", True, 30, lambda w, left: memory_per_token()),
        ]
    if phase == "conv":
        return [(f"kernels-conv-{tags[dt]}", True, 20, forced("causal_conv1d", lambda dt=dt: kernels_conv(dt)))
                for dt in tags] + [
            ("train-mamba2", False, 60, lambda w, left: train_product("mamba2", w, left)),
            ("throughput-Mamba2-370m", True, 50, lambda w, left: throughput("Mamba2-370m")),
            ("memory-GLA-1.3B-64K", True, 60, lambda w, left: memory_gla_64k()),
        ]
    raise ValueError(phase)


def run_items(phase: str, workdir: Path, deadline: float, only) -> dict:
    results = {}
    for name, needs_cuda, need_s, thunk in items(phase):
        if only and name not in only:
            continue
        t0, left = time.time(), deadline - time.time()
        if needs_cuda and not CUDA:
            ok, detail = None, "skipped: no GPU"
        elif CUDA and left < need_s:
            ok, detail = None, f"skipped: needs about {need_s} s, {left:.0f} s left of the check's budget"
        else:
            try:
                ok, detail = thunk(workdir, left)
            except Exception as e:   # one item's failure is its line, not the end of the check
                ok, detail = False, f"{type(e).__name__}: {e}"[:600]
                traceback.print_exc(file=sys.stderr)
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
        results[name] = {"verdict": verdict, "detail": detail, "seconds": round(time.time() - t0, 1)}
        print(f"{verdict} {name}: {detail} [{time.time() - t0:.0f} s]", flush=True)
    return results


def conv_phase(workdir: Path, deadline: float, only) -> dict:
    """The items that need causal_conv1d's extension: in a process that imports the build (or, on the CPU,
    where they run without it), after waiting for gpu.sh's build until shortly before the deadline."""
    status = conv_build_status(deadline - 60)
    if CUDA and status != "ok":
        skipped = {name: {"verdict": "SKIP", "detail": f"skipped: causal_conv1d_cuda not built ({status})",
                          "seconds": 0} for name, *_ in items("conv") if not only or name in only}
        for name, r in skipped.items():
            print(f"SKIP {name}: {r['detail']}", flush=True)
        return skipped
    env = dict(os.environ, **(conv_env() if CUDA else {}))
    out = workdir / "conv.json"
    cmd = [sys.executable, __file__, "--phase", "conv", "--deadline", str(deadline), "--json", str(out)]
    subprocess.run(cmd + (["--only", *only] if only else []), env=env, timeout=max(deadline - time.time(), 1) + 30)
    return json.loads(out.read_text()) if out.exists() else {"conv-phase": {
        "verdict": "FAIL", "detail": "the conv phase's process wrote no results", "seconds": 0}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="item names to run (default: all)")
    ap.add_argument("--budget", type=float, default=345, help="seconds for the whole check, from gpu.sh's start")
    ap.add_argument("--phase", default="main", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--json", help=argparse.SUPPRESS)
    ap.add_argument("--build-conv", metavar="SDIST", help="build causal_conv1d_cuda from its source and exit")
    args = ap.parse_args()
    if args.build_conv:
        build_conv(args.build_conv)
        return 0
    started = float(os.environ.get("STATEX_GPU_CHECK_START", T0))
    deadline = args.deadline or started + args.budget
    with tempfile.TemporaryDirectory() as tmp:
        if args.phase == "conv":
            results = run_items("conv", Path(tmp), deadline, args.only)
            Path(args.json).write_text(json.dumps(results))
            return 0
        results = run_items("main", Path(tmp), deadline, args.only)
        results.update(conv_phase(Path(tmp), deadline, args.only))
    counts = {v: sum(r["verdict"] == v for r in results.values()) for v in ("PASS", "FAIL", "SKIP")}
    device = torch.cuda.get_device_name() if CUDA else "no GPU (CPU rehearsal)"
    print(f"SUMMARY: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped on {device} "
          f"in {time.time() - started:.0f} s", flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_bench.json").write_text(json.dumps({"device": device, **results}, indent=1))
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
