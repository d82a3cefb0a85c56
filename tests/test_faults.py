"""Faults from outside the process, on runs started as users start them (``launch/train.sh``): the whole
job SIGKILLed at random moments then resumed, a corrupt shard met mid-epoch, a disk that fills while a
checkpoint is written."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from statex_dist.parallel.rendezvous import free_port
from tests.train_helpers import ROOT, checkpoint_weights, make_shards

ARCHS = ["gla", "mamba2", "gdn"]
TP2, CP2 = {"parallel.tp": 2}, {"parallel.cp": 2}   # the two-process layouts the faults hit


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"), seq_len=64, samples_per_shard=16)


def overrides(shards, run_dir, steps, every, **extra) -> list[str]:
    """A shipped CPU config shortened to a few steps on the test shards."""
    base = {"data.train": shards, "data.seq_len": 64, "logging.dir": run_dir, "schedule.total_steps": steps,
            "schedule.warmup_steps": 1, "checkpoint.every": every, "checkpoint.resume": "auto",
            "eval.tasks": "[ppl]", "logging.every": 1}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def start(arch, args, log: Path, nproc: int = 0, **popen):
    """``bash launch/train.sh configs/cpu-ARCH-tiny.yaml ARGS`` in a process group of its own (NPROC=n
    through the deepspeed launcher; 0: DEBUG=1, one process)."""
    env = dict(os.environ, MASTER_PORT=str(free_port()), **({"NPROC": str(nproc)} if nproc else {"DEBUG": "1"}))
    return subprocess.Popen(["bash", "launch/train.sh", f"configs/cpu-{arch}-tiny.yaml", *map(str, args)], cwd=ROOT,
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            **popen)


def finish(proc, log: Path, timeout=420) -> str:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    return text


# --- SIGKILL of the whole job at random moments, then resume=auto --------------------------------------------
STEPS, EVERY = 6, 2


def _wait_for(cond, proc, what, timeout=420):
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"no {what} after {timeout}s")
        time.sleep(0.005)


def kill_at_random(arch, shards, run_dir: Path, log: Path, seed: int, moment: str, layout: dict = TP2) -> str:
    """Start the TP=2 run and SIGKILL its process group (launcher, ranks, loader workers) at a moment drawn
    from ``seed``: ``save``: while the checkpoint of a random step is being written; ``step``: at a random
    time inside a random step. Returns what was hit."""
    rng = random.Random(seed)
    proc = start(arch, overrides(shards, run_dir, STEPS, EVERY, **layout), log, nproc=2)
    ckpts = run_dir / "checkpoints"
    try:
        if moment == "save":
            k = rng.choice(range(EVERY, STEPS, EVERY))
            staging = ckpts / ".staging" / f"step{k:08d}"
            _wait_for(staging.exists, proc, f"the step-{k} checkpoint being written")
            time.sleep(rng.uniform(0, 0.02))
        else:
            k = rng.randint(1, STEPS - 1)
            _wait_for(lambda: f"step {k}/{STEPS} " in log.read_text(), proc, f"step {k}")
            time.sleep(rng.uniform(0, 1.5))   # a CPU step of this model takes about 1-3 s
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:   # a late draw on a fast machine: the run had already ended
            pass
        proc.wait()
    logged = [ln.split()[2] for ln in log.read_text().splitlines() if ln.startswith("[statex-dist] step ")]
    done = sorted(p.name for p in ckpts.glob("step*")) if ckpts.exists() else []
    half = sorted(p.name for p in (ckpts / ".staging").glob("step*")) if (ckpts / ".staging").exists() else []
    if moment == "save":
        assert f"step{k:08d}" in half and f"step{k:08d}" not in done, (done, half)
    return (f"killed ({moment} k={k}) after step {logged[-1] if logged else 'none'} was logged; complete {done}, "
            f"half-written {half}")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shards):
    """(arch, layout) -> the weights of the run of STEPS steps at that two-process layout (TP=2 unless named)
    through launch/train.sh, never stopped (made once)."""
    made = {}

    def get(arch, layout: dict = TP2):
        key = (arch, tuple(sorted(layout.items())))
        if key not in made:
            ref = tmp_path_factory.mktemp(f"uninterrupted-{arch}")
            finish(start(arch, overrides(shards, ref, STEPS, EVERY, **layout), ref / "log", nproc=2), ref / "log")
            made[key] = checkpoint_weights(ref, STEPS)
        return made[key]
    return get


@pytest.mark.slow
@pytest.mark.timeout(1500)
@pytest.mark.parametrize("arch,layout", [("gla", TP2), ("mamba2", TP2), ("gdn", CP2)],
                         ids=["gla", "mamba2", "gdn-cp2"])
def test_sigkill_then_resume_is_bit_identical(tmp_path, shards, uninterrupted, arch, layout):
    """The job of two processes (TP=2; Gated DeltaNet at CP=2, each sequence in two segments: its TP=2 resume
    is bit-identical in the SIGTERM test) SIGKILLed while a checkpoint is written and inside a step, each time
    resumed by the same command: the weights at the end equal the uninterrupted run's bitwise."""
    want = uninterrupted(arch, layout)
    # CP=2 steps are short: seeds 12 / 13 kill the step-4 save and step 3, so each resume has steps left to run
    first = 12 if layout is CP2 else ARCHS.index(arch) * 2
    for seed, moment in [(first, "save"), (first + 1, "step")]:
        run = tmp_path / f"killed{seed}"
        hit = kill_at_random(arch, shards, run, tmp_path / f"kill{seed}.log", seed, moment, layout)
        log = tmp_path / f"resume{seed}.log"
        text = finish(start(arch, overrides(shards, run, STEPS, EVERY, **layout), log, nproc=2), log)
        got = checkpoint_weights(run, STEPS)
        assert set(got) == set(want)
        differ = [n for n in want if not torch.equal(got[n], want[n])]
        assert not differ, (hit, differ)
        resumed = [ln for ln in text.splitlines() if "resumed from" in ln]
        print(f"\n{arch} seed {seed}: {hit}; {resumed[0] if resumed else 'started afresh'}; weights bit-identical")


# --- a scheduler's warning (SIGTERM), then resume=auto -------------------------------------------------------
def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies, dead but not yet reaped, do not count)."""
    import psutil
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                return True
        except (ProcessLookupError, psutil.Error):
            pass
    return False


def _launcher_pid(pgid: int) -> int:
    """DeepSpeed's per-node launcher (``deepspeed.launcher.launch``) of the run in process group ``pgid``."""
    import psutil
    for p in psutil.process_iter(["pid", "cmdline"]):
        if "deepspeed.launcher.launch" in " ".join(p.info["cmdline"] or []) and os.getpgid(p.pid) == pgid:
            return p.pid
    raise AssertionError("no deepspeed.launcher.launch process in the run's group")


@pytest.mark.parametrize("arch, to", [("gla", "job"), ("mamba2", "job"), ("gdn", "job"),
                                      pytest.param("gla", "launcher", marks=pytest.mark.slow)])
def test_sigterm_checkpoints_then_resume_is_bit_identical(tmp_path, shards, uninterrupted, arch, to):
    """TP=2 through launch/train.sh, no periodic checkpoints. After step 1 is logged, SIGTERM goes to every
    process of the job as Slurm sends it (``job``: launcher, ranks, loader workers), or to DeepSpeed's
    launcher alone, which forwards it (``launcher``); SIGKILL follows 30 s later, as both do. The ranks agree
    on a step, write its checkpoint and stop with one line naming it; the same command then finishes the run
    with weights bitwise equal to an uninterrupted run's."""
    steps = STEPS
    run, log = tmp_path / "run", tmp_path / "stopped.log"
    proc = start(arch, overrides(shards, run, steps, 0, **{"parallel.tp": 2}), log, nproc=2)
    try:
        _wait_for(lambda: f"step 1/{steps} " in log.read_text(), proc, "step 1")
        if to == "job":
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            os.kill(_launcher_pid(proc.pid), signal.SIGTERM)
        t0 = time.time()
        while _group_alive(proc.pid) and time.time() - t0 < 30:
            time.sleep(0.1)
    finally:
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    text = log.read_text()
    stopped = [ln for ln in text.splitlines() if "stopped on SIGTERM" in ln]
    assert len(stopped) == 1, text[-3000:]
    k = int(stopped[0].split("after step ")[1].split("/")[0])
    ck = run / "checkpoints" / f"step{k:08d}"
    assert 1 <= k < steps and stopped[0] == (
        f"[statex-dist] stopped on SIGTERM after step {k}/{steps}: checkpoint {ck} written; the same command "
        f"(checkpoint.resume=auto) continues from it"), text[-3000:]
    from statex_dist.checkpoint.sharded import ShardedCheckpoint
    ShardedCheckpoint(ck / "model", verify=True)
    log = tmp_path / "resumed.log"
    text = finish(start(arch, overrides(shards, run, steps, 0, **{"parallel.tp": 2}), log, nproc=2), log)
    assert f"resumed from {ck} at step {k}" in text, text[-3000:]
    want, got = uninterrupted(arch), checkpoint_weights(run, steps)
    assert set(got) == set(want) and not [n for n in want if not torch.equal(got[n], want[n])]


# --- a corrupt shard met mid-epoch -------------------------------------------------------------------------------
def corrupt_member(path: Path, member: int) -> None:
    """Overwrite the tar header of sample ``member`` (same size: only reading finds it). A sample of 64 tokens
    is a 512-byte header and 130 bytes of uint16 padded to 512."""
    data = bytearray(path.read_bytes())
    data[member * 1024: member * 1024 + 512] = b"\x07" * 512
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("arch", ARCHS)
def test_corrupt_shard_mid_epoch_named(tmp_path, shards, arch):
    import shutil
    bad = shutil.copytree(shards, tmp_path / "shards")
    # epoch 0's second shard of one virtual reader (seed 0, no shuffle buffer), broken at its 6th sample: steps 1-4
    # read the first shard, step 5 the second's first 4 samples, step 6 meets the broken one
    order = np.random.default_rng([0, 0]).permutation(len(json.loads((bad / "manifest.json").read_text())["shards"]))
    victim = bad / f"shard-{order[1]:06d}.tar"
    corrupt_member(victim, 5)
    log = tmp_path / "log"
    proc = start(arch, overrides(bad, tmp_path / "run", 40, 0, **{"data.seed": 0, "data.shuffle_buffer": 0,
                                                                      "data.virtual_readers": 1}), log)
    proc.wait(300)
    text = log.read_text()
    assert proc.returncode != 0, text[-3000:]
    assert "step 5/40" in text and "step 6/40" not in text, text[-3000:]   # found mid-epoch, not at start-up
    named = [ln for ln in text.splitlines() if f"statex_dist.train: error: shard {victim} " in ln and "corrupt" in ln]
    assert named, text[-3000:]
    assert "Traceback" not in text, text[-3000:]   # one line, as for bad input at start-up


# --- the disk fills while a checkpoint is written ------------------------------------------------------------------
def _tmpfs(folder: Path, size: int) -> bool:
    folder.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    return r.returncode == 0


@pytest.mark.parametrize("arch", ["gla", pytest.param("mamba2", marks=pytest.mark.slow)])   # the same writer
def test_disk_full_during_checkpoint(tmp_path, shards, arch):
    run, ck = tmp_path / "run", tmp_path / "ck"
    first = overrides(shards, run, 2, 2, **{"checkpoint.dir": ck})
    finish(start(arch, first, tmp_path / "a.log"), tmp_path / "a.log")
    size = sum(f.stat().st_size for f in (ck / "step00000002").rglob("*") if f.is_file())
    # room for 1.5 checkpoints: the step-2 one fits, the step-4 one runs out of space half way
    disk = tmp_path / "disk"
    mounted = _tmpfs(disk, size * 3 // 2 + 65536)
    limit = {}
    if mounted:
        import shutil
        shutil.copytree(ck, disk / "ck")
        ck = disk / "ck"
    else:
        # no mount (not root): a file-size limit on the job stops the write at the same point
        import resource
        big = max(f.stat().st_size for f in (ck / "step00000002").rglob("*") if f.is_file())

        def limit_size():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # write() then fails with EFBIG, as on a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (big // 2, big // 2))
        limit = {"preexec_fn": limit_size}
    try:
        log = tmp_path / "b.log"
        proc = start(arch, overrides(shards, run, 4, 2, **{"checkpoint.dir": ck}), log, **limit)
        proc.wait(300)
        text = log.read_text()
        assert proc.returncode != 0, text[-3000:]
        assert "resumed from" in text and "step 4/4" in text, text[-3000:]
        assert f"could not write checkpoint step00000004 in {ck}" in text, text[-3000:]
        assert "the last complete checkpoint is step00000002" in text, text[-3000:]
        assert not (ck / "step00000004").exists() and not (ck / ".staging" / "step00000004").exists()
        from statex_dist.checkpoint.sharded import ShardedCheckpoint
        ShardedCheckpoint(ck / "step00000002" / "model", verify=True)      # intact: every file's digest
        # room again (a larger tmpfs, or no limit): resume=auto picks step 2 and finishes
        if mounted:
            subprocess.run(["mount", "-o", f"remount,size={size * 4}", str(disk)], check=True)
        log = tmp_path / "c.log"
        text = finish(start(arch, overrides(shards, run, 4, 2, **{"checkpoint.dir": ck}), log), log)
        assert "resumed from" in text and "step00000002 at step 2" in text, text[-3000:]
        assert (ck / "step00000004" / "statex.json").exists()
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)
