"""A real-size model trained at one layout, checkpointed, resumed at another, against the uninterrupted run:
the layout change at the public checkpoints' widths, on this machine, with every rank's memory.

Two runs of the training job as users start it (``launch/train.sh``, NPROC=2, webdataset shards of the
synthetic corpus, fp32, ZeRO-1, ``STATEX_MEMORY_REPORT`` on):

A. ``--steps`` steps at ``--from`` (default TP=2), a checkpoint every ``--save-at`` steps: the uninterrupted
   run, and the checkpoint to resume;
B. from A's checkpoint at step ``--save-at``, at ``--to`` (default TP=1 x PP=2), to step ``--steps``.

Reported: B's losses against A's for the resumed steps (tensorboard's scalars), and B's final weights, fp32
master weights and AdamW moments against A's, tensor by tensor from the two final checkpoints (the layout-free
format reads both at full shape); the largest relative error max|a - b| / max|b| over all of them (equal
means the resume restored everything and the new layout computes what the old one did, up to the order of its
sums). Per rank and run: the step's peak RSS (the last step's), the save's and the restore's peak and their
excess over that step peak (what item "saves and resumes in bounded memory" bounds: <= 512 MB a rank).

    .venv/bin/python benchmarks/resume_real_size.py --arch gla            # 1024 wide, 24 layers, vocab 32000
    .venv/bin/python benchmarks/resume_real_size.py --arch mamba2         # 1024 wide, 48 layers, vocab 50288

Exit status 1 when the error exceeds ``--tol`` (1e-4) or a spike exceeds ``--spike-mb`` (512).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.memory import REAL, launch  # noqa: E402  (the same shapes and the same way to start a run)

MB = 1e6
LAYOUTS = {"tp2": {"parallel.tp": 2}, "tp1pp2": {"parallel.pp": 2}, "dp2": {}}   # NPROC=2 each


def overrides(a, model: dict, shards: Path, run_dir: Path, layout: str, resume: str) -> list[str]:
    over = {"model.source": "scratch", "model.config": json.dumps(model), "model.dtype": "fp32",
            "expansion.enabled": "false", "parallel.device": "cpu", "parallel.zero_stage": 1,
            **LAYOUTS[layout], "parallel.activation_checkpointing": str(a.recompute).lower(),
            "data.train": shards, "data.seq_len": a.seq, "data.micro_batch": a.micro_batch,
            "data.global_batch": a.global_batch, "data.workers": 0, "data.shuffle_buffer": 16,
            "optimizer.lr": "3e-4", "schedule.total_steps": a.steps, "schedule.warmup_steps": 1,
            "logging.dir": run_dir, "logging.every": 1, "eval.tasks": "[]", "checkpoint.every": a.save_at,
            "checkpoint.keep": 4, "checkpoint.resume": resume, "seed": 0}
    return [f"{k}={v}" for k, v in over.items()]


def run(a, model, shards, run_dir: Path, layout: str, resume: str) -> float:
    from statex_dist.parallel.rendezvous import free_port
    cmd = ["bash", str(ROOT / "launch" / "train.sh"), str(ROOT / "configs" / f"cpu-{a.arch}-tiny.yaml"),
           *overrides(a, model, shards, run_dir, layout, resume)]
    t0 = time.time()
    run_dir.mkdir(parents=True, exist_ok=True)
    launch(cmd, {"NPROC": "2", "PYTHON": sys.executable, "MASTER_PORT": str(free_port())}, run_dir / "mem",
           run_dir / "run.log", a.timeout)
    return time.time() - t0


def losses(run_dir: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars("train/loss")}


def compare_checkpoints(a_ckpt: Path, b_ckpt: Path) -> dict:
    """Largest relative error per folder (model, optimizer/<key>) and the worst tensor, read one at a time."""
    from statex_dist.checkpoint.sharded import ShardedCheckpoint
    from statex_dist.training.optimizer_state import FOLDER, KEYS
    out = {}
    for sub in ["model", *(f"{FOLDER}/{k}" for k in KEYS if (a_ckpt / FOLDER / k).is_dir())]:   # fp32: no master
        ca, cb = ShardedCheckpoint(a_ckpt / sub), ShardedCheckpoint(b_ckpt / sub)
        assert sorted(ca.names()) == sorted(cb.names()), sub
        worst, name = 0.0, None
        for n in ca.names():
            x, y = cb.get(n).double(), ca.get(n).double()
            e = ((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item()
            if not math.isfinite(e) or e >= worst:
                worst, name = e, n
            del x, y
        out[sub] = {"max_rel_err": worst, "tensor": name, "tensors": len(ca.names())}
    return out


def memory(run_dir: Path) -> list[dict]:
    rows = []
    for f in sorted((run_dir / "mem").glob("rank*.json")):
        m = json.loads(f.read_text())
        ph = m["phases"]
        steps = [p for p in ph.values() if p["kind"] == "step"]
        step_peak = steps[-1]["peak"]
        row = {"rank": m["rank"], "params": m.get("run", {}).get("params_rank"), "step_peak": step_peak}
        saves = [p for p in ph.values() if p["kind"] == "save"]
        if saves:
            row["save_peak"] = max(s["peak"] for s in saves)
            row["save_spike"] = row["save_peak"] - step_peak
        if "restore" in ph:
            row["restore_peak"] = ph["restore"]["peak"]
            row["restore_spike"] = row["restore_peak"] - step_peak
        rows.append(row)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=list(REAL), required=True)
    ap.add_argument("--layers", type=int, default=None, help="default: the real depth (24 GLA, 48 Mamba2)")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--global-batch", type=int, default=4)
    ap.add_argument("--recompute", action="store_true", help="parallel.activation_checkpointing=true")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--save-at", type=int, default=2)
    ap.add_argument("--from", dest="src", default="tp2", choices=list(LAYOUTS))
    ap.add_argument("--to", default="tp1pp2", choices=list(LAYOUTS))
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--spike-mb", type=float, default=512)
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per run")
    ap.add_argument("--work", default=None, help="default runs/resume-real-<arch>")
    ap.add_argument("--keep", action="store_true", help="keep the runs' checkpoints (gigabytes)")
    a = ap.parse_args(argv)
    model = dict(REAL[a.arch], hidden_size=a.hidden)
    model.update(num_layers=a.layers or model["num_layers"], vocab_size=a.vocab or model["vocab_size"])
    work = Path(a.work or ROOT / "runs" / f"resume-real-{a.arch}")
    shutil.rmtree(work / "A", ignore_errors=True)
    shutil.rmtree(work / "B", ignore_errors=True)
    from tests.train_helpers import make_shards
    shards = make_shards(work / f"data-seq{a.seq}", seq_len=a.seq, samples_per_shard=16)
    t0 = time.time()
    print(f"[1/3] A: {a.steps} steps at {a.src}, a checkpoint every {a.save_at}", flush=True)
    ta = run(a, model, shards, work / "A", a.src, "none")
    resume = work / "A" / "checkpoints" / f"step{a.save_at:08d}"
    print(f"[2/3] B: from {resume.name} at {a.to} to step {a.steps} ({ta:.0f}s for A)", flush=True)
    tb = run(a, model, shards, work / "B", a.to, str(resume))
    print(f"[3/3] comparing ({tb:.0f}s for B)", flush=True)
    la, lb = losses(work / "A"), losses(work / "B")
    resumed = sorted(lb)
    loss_err = max(abs(lb[s] - la[s]) / abs(la[s]) for s in resumed)
    final = f"step{a.steps:08d}"
    ck = compare_checkpoints(work / "A" / "checkpoints" / final, work / "B" / "checkpoints" / final)
    mem = {"A": memory(work / "A"), "B": memory(work / "B")}
    params = sum(r["params"] or 0 for r in mem["A"]) if a.src == "tp2" else None
    worst = max([loss_err] + [v["max_rel_err"] for v in ck.values()])
    spikes = [r.get(k, -math.inf) for rows in mem.values() for r in rows for k in ("save_spike", "restore_spike")]
    ok = worst <= a.tol and max(spikes) <= a.spike_mb * MB
    result = {"setup": {**vars(a), "model": model}, "params_total_tp2": params, "losses": {"A": la, "B": lb},
              "loss_max_rel_err": loss_err, "checkpoints": ck, "memory": mem, "seconds": {"A": ta, "B": tb},
              "max_rel_err": worst, "ok": ok}
    out = ROOT / "benchmarks" / "results" / f"resume-real-{a.arch}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    for name, rows in mem.items():
        for r in rows:
            print(f"  {name} rank {r['rank']}: step peak {r['step_peak'] / MB:,.0f} MB" +
                  "".join(f", {k} {r[k + '_peak'] / MB:,.0f} MB ({r[k + '_spike'] / MB:+,.0f})"
                          for k in ("save", "restore") if k + "_peak" in r))
    for sub, v in ck.items():
        print(f"  {sub}: max rel err {v['max_rel_err']:.1e} ({v['tensor']}, {v['tensors']} tensors)")
    if not a.keep:
        for run_dir in (work / "A", work / "B"):
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    print(f"resume_real_size: {a.arch} {model['hidden_size']}x{model['num_layers']} vocab {model['vocab_size']}: "
          f"{a.src} -> {a.to} at step {a.save_at}, steps {resumed} loss rel err {loss_err:.1e}, weights / master / "
          f"moments <= {max(v['max_rel_err'] for v in ck.values()):.1e}; largest save / restore spike "
          f"{max(spikes) / MB:+,.0f} MB a rank; {'OK' if ok else 'FAILED'}; {time.time() - t0:.0f}s; {out}",
          flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
