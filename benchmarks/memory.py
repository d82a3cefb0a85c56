"""Peak memory per rank of the real training job, split by kind, against the bytes per parameter the
configuration needs in theory.

Every configuration (architecture x layout x dtype x ZeRO stage) is two runs of the training job as users
start it (``python -m statex_dist.train`` for one process, ``launch/train.sh`` with NPROC=2 for tp2 / pp2 /
dp2) on webdataset shards from the synthetic corpus (tests/train_helpers.py ``make_shards``), with
``STATEX_MEMORY_REPORT`` set so that each rank writes its figures (statex_dist/training/memory_report.py):

1. ``--steps`` steps, a checkpoint after the last (``checkpoint.every=steps``);
2. the same job resumed from it (``checkpoint.resume=auto``) for one more step.

Per rank, from run 1: params (this rank's TP / PP shard), ``peak`` = the largest of the steps' peaks (the
step's own peak RSS: VmHWM, reset through /proc/self/clear_refs before each step; the last step, as the
first also grows the process once: lazy imports, allocator arenas), ``libs`` = RSS after the
process groups exist and before the model is built (torch, DeepSpeed, megatron-core, the interpreter), and
the tensors alive just before the optimizer step of the last step (gradients still held, AdamW's moments
made by the first step), each storage counted once: weights, grads (param.grad / grad_accum and DeepSpeed's
gradient buffers), master (DeepSpeed's fp32 partitions), moments (AdamW's exp_avg + exp_avg_sq), comm
(bucket / ipg / pipeline buffers), other (any other live tensor). ``act`` = the most bytes autograd held
saved for backward at once in a step (saved_tensors_hooks; parameters excluded). ``rest`` = peak - libs -
tensors - act: the allocator, transient copies inside the optimizer step, the gloo buffers. "B/param" =
(peak - libs) / params; theory = weights + grads + master + moments per parameter as this project runs
DeepSpeed at that dtype / ZeRO stage / DP size (see ``theory``); "min" drops what the mathematics does not
need (an fp32 master copy of fp32 weights). "peak / (theory + act)" = (peak - libs) / (theory x params +
act): the issue's goal is <= 1.3. "fwd / bwd / opt": the largest RSS sampled in the forward, the backward
and the optimizer step of the last step (memory_report's ``stages``): where the peak is. Save and resume spikes: the peak during the checkpoint save (run 1) and
during the restore (run 2) minus run 1's step peak (negative: it fits in the step's headroom), and in
brackets the phase's own rise over the RSS just before it.

RSS is the rank's own process (the loader runs in-process: data.workers=0). The machine has 2 cores shared
with other work: times are not reported; bytes do not depend on load.

    .venv/bin/python benchmarks/memory.py [--archs gla mamba2] [--layers N] [--hidden 1024] [--vocab V]
        [--seq 512] [--layouts tp1 tp2 pp2 dp2] [--dtypes fp32 bf16] [--zero 0 1 2] [--steps 2] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MB = 1e6
# GLA-340M (fla-hub) and Mamba2-370m (state-spaces) shapes
REAL = {
    "gla": dict(arch="gla", vocab_size=32000, hidden_size=1024, num_layers=24, num_heads=4, use_short_conv=True,
                tie_word_embeddings=False),
    "mamba2": dict(arch="mamba2", vocab_size=50288, hidden_size=1024, num_layers=48, d_state=128, headdim=64,
                   ngroups=1, chunk_size=256, tie_word_embeddings=True),
}
QUICK = dict(hidden=128, layers=2, vocab=512, seq=64, mamba2=dict(d_state=16, headdim=32, chunk_size=32))
NPROC = {"tp1": 1, "tp2": 2, "pp2": 2, "dp2": 2}
LAYOUT = {"tp1": {}, "tp2": {"parallel.tp": 2}, "pp2": {"parallel.pp": 2}, "dp2": {}}


def theory(dtype: str, zero: int, dp: int) -> dict:
    """Bytes per parameter held by a rank, as this project configures DeepSpeed (training/ds_setup.py).

    fp32: ZeRO-0 steps torch AdamW on the weights themselves, and at ZeRO-1/2 the fp32 master partition is
    the weights' own (``share_fp32_master``); ZeRO-3 keeps DeepSpeed's separate fp32 partition (4/dp).
    bf16: ZeRO-0 is DeepSpeed's bf16 DDP optimizer (bf16 grads, fp32 master); ZeRO-1 its BF16_Optimizer with
    fp32 gradient accumulation over the whole (not partitioned) gradient; ZeRO-2 the ZeRO optimizer's fp32
    accumulation, partitioned. ZeRO-2 partitions gradients: each rank keeps 1/dp (its buckets aside).
    "min" drops what the mathematics does not need (a master copy of fp32 weights).
    """
    if dtype == "fp32":
        w, g = 4, (4 if zero < 2 else 4 / dp)
        master = 4 / dp if zero == 3 else 0
        moments = 8 if zero == 0 else 8 / dp
        need_master = 0
    else:
        w = 2
        g = {0: 2, 1: 4, 2: 4 / dp}[zero]
        master = 4 if zero == 0 else 4 / dp
        moments = 8 if zero == 0 else 8 / dp
        need_master = master
    return {"weights": w, "grads": g, "master": master, "moments": moments, "total": w + g + master + moments,
            "min": w + g + need_master + moments}


def model_config(arch: str, a) -> dict:
    cfg = dict(REAL[arch])
    cfg.update(hidden_size=a.hidden, num_layers=a.layers or cfg["num_layers"],
               vocab_size=a.vocab or cfg["vocab_size"])
    if a.quick and arch == "mamba2":
        cfg.update(QUICK["mamba2"])
    return cfg


def command(arch, layout, dtype, zero, a, shards: Path, run_dir: Path, steps: int, resume: bool):
    over = {"model.source": "scratch", "model.config": json.dumps(model_config(arch, a)), "model.dtype": dtype,
            "expansion.enabled": "false", "parallel.device": "cpu", "parallel.zero_stage": zero,
            **LAYOUT[layout], "data.train": shards, "data.seq_len": a.seq, "data.micro_batch": a.micro_batch,
            "data.global_batch": a.global_batch, "data.workers": 0, "data.shuffle_buffer": 16,
            "schedule.total_steps": steps, "schedule.warmup_steps": 1, "logging.dir": run_dir,
            "logging.every": 1000, "eval.tasks": "[]", "checkpoint.every": a.steps, "checkpoint.keep": 2,
            "checkpoint.resume": "auto" if resume else "none", "seed": 0}
    args = [f"{k}={v}" for k, v in over.items()]
    config = str(ROOT / "configs" / f"cpu-{arch}-tiny.yaml")
    if NPROC[layout] == 1:
        return [sys.executable, "-m", "statex_dist.train", config, *args], {}
    from statex_dist.parallel.rendezvous import free_port
    return (["bash", str(ROOT / "launch" / "train.sh"), config, *args],
            {"NPROC": str(NPROC[layout]), "PYTHON": sys.executable, "MASTER_PORT": str(free_port())})


def launch(cmd, extra_env, report: Path, log: Path, timeout: int) -> None:
    env = dict(os.environ, **extra_env, STATEX_MEMORY_REPORT=str(report), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with log.open("w") as f:
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
            raise RuntimeError(f"timed out after {timeout}s; log {log}")
    if rc:
        raise RuntimeError(f"exit {rc}: {log.read_text()[-1500:]}")


def summarise(measure: dict, resume: dict) -> dict:
    """One rank's row from its two reports."""
    r = measure["run"]
    steps = [p for p in measure["phases"].values() if p["kind"] == "step"]
    saves = [p for p in measure["phases"].values() if p["kind"] == "save"]
    step_peak = steps[-1]["peak"]   # the last step: the first also holds one-time growth (lazy imports, caches)
    libs = measure["points"]["libraries"]["rss"]
    t = measure["tensors"].get("before_step") or measure["tensors"]["engine"]
    act = max(p.get("activations_saved_peak", 0) for p in steps)
    params = r["params_rank"]
    th = theory("fp32" if r["dtype"] == "float32" else "bf16", r["zero"], r["dp"])
    row = {**r, "step_peak": step_peak, "libs": libs, "engine_peak_since_start": measure["points"]["engine"][
        "peak_since_start"], "weights": t["weights"], "grads": t["grads"], "master": t["master"],
        "moments": t["optimizer_state"], "comm": t["comm_buffers"],
        "other": t["other_deepspeed"] + t["other_tensors"], "act": act,
        "rest": step_peak - libs - t["counted"] - act, "bytes_per_param": (step_peak - libs) / params,
        "tensor_bytes_per_param": t["counted"] / params, "theory": th, "detail": t["detail"],
        "stages": steps[-1].get("stages", {}),
        # the goal: the step's peak above the libraries within 1.3x of the theory's bytes plus the activations
        "vs_need": (step_peak - libs) / (th["total"] * params + act)}
    if saves:
        s = saves[-1]
        row["save_spike"], row["save_rise"] = s["peak"] - step_peak, s["peak"] - s["rss_before"]
    rs = resume.get("phases", {}).get("restore") if resume else None
    if rs:
        row["resume_spike"], row["resume_rise"] = rs["peak"] - step_peak, rs["peak"] - rs["rss_before"]
    return row


def table(rows: list[dict]) -> str:
    def mb(x):
        return "" if x is None else f"{x / MB:,.1f}"

    def stages(r):   # the sampled peak of each stage of the step: where the step's peak is
        st = r.get("stages", {})
        return " / ".join(f"{st[k]['peak'] / MB:,.0f}" if k in st else "-" for k in ("forward", "backward", "optimizer"))

    def spike(r, k):
        return "" if f"{k}_spike" not in r else f"{mb(r[k + '_spike'])} (+{mb(r[k + '_rise'])})"
    out = ["| config | rank | params/rank | theory B/param (min) | measured B/param (tensors) | peak / (theory + act) "
           "| peak MB | libs | "
           "weights | grads | master | moments | comm | other | act | rest | fwd / bwd / opt peak MB | save spike MB | "
           "resume spike MB |",
           "|---" * 19 + "|"]
    for r in rows:
        th = r["theory"]
        out.append(f"| {r['config']} | {r['rank_label']} | {r['params_rank']:,} | {th['total']:.0f} ({th['min']:.0f}) | "
                   f"{r['bytes_per_param']:.1f} ({r['tensor_bytes_per_param']:.1f}) | {r['vs_need']:.2f} | "
                   f"{mb(r['step_peak'])} | "
                   f"{mb(r['libs'])} | {mb(r['weights'])} | {mb(r['grads'])} | {mb(r['master'])} | "
                   f"{mb(r['moments'])} | {mb(r['comm'])} | {mb(r['other'])} | {mb(r['act'])} | {mb(r['rest'])} | "
                   f"{stages(r)} | {spike(r, 'save')} | {spike(r, 'resume')} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", nargs="+", default=None, choices=list(REAL))
    ap.add_argument("--layers", type=int, default=None, help="default: the real depth (24 GLA, 48 Mamba2)")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=None, help="default: the real vocabulary (32000, 50288)")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--layouts", nargs="+", default=None, choices=list(NPROC))
    ap.add_argument("--dtypes", nargs="+", default=None, choices=["fp32", "bf16"])
    ap.add_argument("--zero", nargs="+", type=int, default=None, choices=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--global-batch", type=int, default=4)
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per run")
    ap.add_argument("--quick", action="store_true",
                    help="smoke size: hidden 128, 2 layers, vocab 512, seq 64; GLA fp32 ZeRO-1 at tp1 and tp2")
    ap.add_argument("--report-only", action="store_true", help="tabulate the reports already in --work")
    ap.add_argument("--keep", action="store_true", help="keep the runs' checkpoints (gigabytes each)")
    ap.add_argument("--work", default=None, help="runs and data (default runs/memory[-quick])")
    ap.add_argument("--out", default=None, help="results stem (default benchmarks/results/memory[-quick])")
    a = ap.parse_args(argv)
    if a.quick:
        a.hidden, a.layers, a.vocab, a.seq = QUICK["hidden"], QUICK["layers"], QUICK["vocab"], QUICK["seq"]
        a.archs, a.layouts = a.archs or ["gla"], a.layouts or ["tp1", "tp2"]
        a.dtypes, a.zero = a.dtypes or ["fp32"], a.zero or [1]
    a.archs, a.layouts = a.archs or ["gla", "mamba2"], a.layouts or ["tp1", "tp2", "pp2"]
    a.dtypes, a.zero = a.dtypes or ["fp32", "bf16"], a.zero if a.zero is not None else [0, 1, 2]
    suffix = "-quick" if a.quick else ""
    work = Path(a.work or ROOT / "runs" / f"memory{suffix}")
    out = Path(a.out or ROOT / "benchmarks" / "results" / f"memory{suffix}")
    from tests.train_helpers import make_shards
    shards = make_shards(work / f"data-seq{a.seq}", seq_len=a.seq, samples_per_shard=16)

    rows, failed, t0 = [], [], time.time()
    configs = [(ar, lo, dt, z) for ar in a.archs for lo in a.layouts for dt in a.dtypes for z in a.zero]
    for i, (arch, layout, dtype, zero) in enumerate(configs, 1):
        name = f"{arch} {layout} {dtype} ZeRO-{zero}"
        if layout == "pp2" and zero > 1:
            print(f"[{i}/{len(configs)}] {name}: skipped (DeepSpeed's pipeline engine takes ZeRO 0/1 only)", flush=True)
            continue
        run_dir = work / f"{arch}-{layout}-{dtype}-z{zero}"
        t1 = time.time()
        if not a.report_only:
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
        try:
            for resume in (False, True) if not a.report_only else ():
                tag = "resume" if resume else "measure"
                cmd, env = command(arch, layout, dtype, zero, a, shards, run_dir,
                                   a.steps + 1 if resume else a.steps, resume)
                launch(cmd, env, run_dir / f"mem-{tag}", run_dir / f"{tag}.log", a.timeout)
        except RuntimeError as e:   # a failed run: named here, listed in the JSON, and the exit status is 1
            failed.append(name)
            print(f"[{i}/{len(configs)}] {name}: FAILED {str(e)[-600:]}", flush=True)
            continue
        new = []
        for f in sorted((run_dir / "mem-measure").glob("rank*.json")):
            m = json.loads(f.read_text())
            rf = run_dir / "mem-resume" / f.name
            row = summarise(m, json.loads(rf.read_text()) if rf.exists() else {})
            row.update(config=name, arch=arch, layout=layout, rank_label=f"{m['rank']} (tp{row['tp_rank']} "
                       f"pp{row['stage']} dp{row['dp_rank']})")
            new.append(row)
        rows += new
        if not a.keep:   # gigabytes a configuration at the real widths
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        worst = max(new, key=lambda r: r["step_peak"])
        print(f"[{i}/{len(configs)}] {name}: {len(new)} rank(s), params/rank {worst['params_rank']:,}, peak "
              f"{worst['step_peak'] / MB:,.0f} MB (libs {worst['libs'] / MB:,.0f}), {worst['bytes_per_param']:.1f} "
              f"B/param above libs vs theory {worst['theory']['total']:.0f}; {time.time() - t1:.0f}s", flush=True)

    md = table(rows)
    print(md)
    out.parent.mkdir(parents=True, exist_ok=True)
    setup = (f"hidden {a.hidden}, layers {a.layers or 'real'}, vocab {a.vocab or 'real'}, seq {a.seq}, "
             f"micro-batch {a.micro_batch}, global batch {a.global_batch}, {a.steps} steps")
    out.with_suffix(".md").write_text(f"# Memory per rank ({setup})\n\n{md}\n")
    out.with_suffix(".json").write_text(json.dumps({"setup": vars(a), "rows": rows, "failed": failed}, indent=1,
                                                   default=str))
    ratio = [r["bytes_per_param"] / r["theory"]["total"] for r in rows]
    print(f"memory: {len(rows)} rank rows from {len(configs) - len(failed)} configs"
          f"{f', {len(failed)} failed' if failed else ''}; measured/theory B/param above libraries "
          f"{min(ratio, default=0):.1f}x..{max(ratio, default=0):.1f}x; {time.time() - t0:.0f}s; "
          f"{out.with_suffix('.md')}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
