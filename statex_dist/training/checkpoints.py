"""Training checkpoints: the model weights and the optimizer state in the sharded, layout-free format, each
tensor once, and this project's metadata, so a resume at any layout and tools/reshard_expand.py read the same
files.

    <dir>/step00000100/            a complete checkpoint (renamed into place only once every rank is done)
        model/manifest.json        sharded format (statex_dist.checkpoint.sharded), one file per TP x PP rank
        model/weights/tpRR-ppSS.safetensors
        optimizer/{exp_avg,exp_avg_sq}/   the optimizer state in the same format (optimizer_state.py), and
        optimizer/fp32/            the fp32 master where the weights are not fp32 (else model/ is the master)
        statex.json                run config, step, data position, RNG states, model config, AdamW's step
                                   count (written last)
    <dir>/.staging/step...         where a checkpoint is written; a job killed here leaves only this

DeepSpeed's own files (``engine.save_checkpoint``) are not written: they would hold every weight and optimizer
tensor a second time, per rank of one layout, and what they hold beyond the tensors is rebuilt on resume (the
schedule is a function of the step; DeepSpeed's step counters are set; no loss scaler runs in fp32 or bf16).
Checkpoints written before hold them (``statex.json`` without ``"deepspeed": false``) and still resume
through them at their own layout (:func:`load`).

Resume picks the newest ``step*`` folder holding ``statex.json``; anything in ``.staging`` is ignored.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from statex_dist.checkpoint.atomic import write_manifest
from statex_dist.checkpoint.sharded import FORMAT, manifest_body, shard_file
from statex_dist.checkpoint.side_files import keep_side_files
from statex_dist.checkpoint.stream_writer import StreamingSafetensorsWriter
from statex_dist.models import specs_for
from statex_dist.models.names import named_internal_parameters
from statex_dist.training import optimizer_state

META = "statex.json"
_STEP = re.compile(r"step(\d{8})$")


def layout(run_cfg, world: int) -> dict:
    """What DeepSpeed's own files depend on: a resume at another of these converts (optimizer_state.py)."""
    p = run_cfg.parallel
    return {"tp": p.tp, "pp": p.pp, **({"cp": p.cp} if p.cp > 1 else {}), "dp": p.dp(world),
            "zero_stage": p.zero_stage, "dtype": run_cfg.model.dtype}


def describe(lay: dict) -> str:
    dp = f" DP={lay['dp']}" if lay.get("dp") else ""   # none for a checkpoint resharded offline
    cp = f" CP={lay['cp']}" if lay.get("cp", 1) > 1 else ""
    return f"TP={lay['tp']} PP={lay['pp']}{cp}{dp} ZeRO-{lay['zero_stage']}"


def tag(step: int) -> str:
    return f"step{step:08d}"


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.exists():
        return []
    found = [p for p in ckpt_dir.iterdir() if _STEP.match(p.name) and (p / META).exists()]
    return sorted(found, key=lambda p: int(_STEP.match(p.name).group(1)))


def rng_state() -> dict:
    """This rank's torch, numpy and Python generator states, whole (JSON-able)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state().tolist(),
            "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
                      "cached_gaussian": float(gauss)},
            "python": {"version": version, "state": list(internal), "gauss_next": gauss_next}}


def set_rng_state(st: dict) -> None:
    """Restore what :func:`rng_state` saved (checkpoints from before numpy / Python were whole: torch only)."""
    torch.set_rng_state(torch.tensor(st["torch"], dtype=torch.uint8))
    if isinstance(st.get("numpy"), dict):
        n = st["numpy"]
        np.random.set_state((n["kind"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    if isinstance(st.get("python"), dict):
        py = st["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


def _canonical(d: dict) -> dict:
    """A config dict as JSON stores it (tuples become lists, keys strings), so a saved and a live config
    compare by value."""
    return json.loads(json.dumps(d))


def config_differences(saved: dict, live: dict) -> list[str]:
    """``key: saved -> live`` for each model-config field that differs by value (empty: the same model)."""
    a, b = _canonical(saved), _canonical(live)
    return [f"{k}: {a.get(k, '<absent>')} in the checkpoint, {b.get(k, '<absent>')} in this run"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _zero3_gathered(p):
    import deepspeed
    return deepspeed.zero.GatheredParameters([p]) if hasattr(p, "ds_id") else _Null()


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _own_parameters(module) -> list:
    """(name, parameter) of this stage, each name once, in the order every DP rank walks them."""
    seen, entries = set(), []
    for n, p in named_internal_parameters(module):
        if n not in seen:
            seen.add(n)
            entries.append((n, p))
    return entries


def _writer(folder: Path, entries: list, config, tp_rank: int, tp: int, stage: int,
            dtype: Optional[torch.dtype] = None) -> StreamingSafetensorsWriter:
    specs = specs_for(config, tp)
    path = folder / shard_file(tp_rank, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = [(n, dtype or p.dtype, specs[n].local_shape(tp)) for n, p in entries]
    return StreamingSafetensorsWriter(path, header, {"format": FORMAT})


def _write_shards(root: Path, engine, module, config, tp_rank: int, tp: int, stage: int,
                  write: bool) -> Optional[dict]:
    """This (TP rank, stage)'s slices of the weights (``model/``) and of the layout-free optimizer state
    (``optimizer/<key>/``). Every DP rank calls it: the ZeRO gathers are collectives over the DP group; only
    a rank with ``write`` writes. Returns {"names", "file", "stage", "info": {folder: file entry}} from a writer."""
    entries = _own_parameters(module)
    keys = optimizer_state.keys_to_save(entries[0][1].dtype)   # every parameter of a run has its dtype
    writers = {}
    if write:
        writers["model"] = _writer(root / "model", entries, config, tp_rank, tp, stage)
        for k in keys:
            writers[f"{optimizer_state.FOLDER}/{k}"] = _writer(root / optimizer_state.FOLDER / k, entries, config,
                                                               tp_rank, tp, stage, torch.float32)
    optimizer_state.ensure_state(engine)  # a save before the first step: AdamW's zero state
    try:
        for n, p in entries:
            with _zero3_gathered(p):
                if write:
                    writers["model"].write(n, p.detach().clone())
            if write or optimizer_state.partitioned(p):  # a non-writer joins the DP gathers, nothing else
                states = optimizer_state.full_state(engine, p)
            for k in keys if write else ():
                writers[f"{optimizer_state.FOLDER}/{k}"].write(n, states[k])
        infos = {folder: w.close() for folder, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return ({"names": [n for n, _ in entries], "file": shard_file(tp_rank, stage), "stage": stage, "info": infos}
            if write else None)


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, a quota, a lost mount); the message names it and
    the last complete checkpoint, which is left as it was."""


@contextlib.contextmanager
def _writing(ckpt_dir: Path, name: str):
    """Turn a failed write into one clear error and drop the half-written folder, so the space it took comes
    back. torch.save reports a full disk as a RuntimeError ("enforce fail ... unexpected pos"), hence both
    types."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        if isinstance(e, CheckpointWriteError):
            raise
        shutil.rmtree(ckpt_dir / ".staging" / name, ignore_errors=True)
        done = complete_checkpoints(ckpt_dir)
        last = (f"the last complete checkpoint is {done[-1].name} (checkpoint.resume=auto picks it)" if done
                else "there is no complete checkpoint yet")
        raise CheckpointWriteError(f"could not write checkpoint {name} in {ckpt_dir} ({type(e).__name__}: "
                                   f"{' '.join(str(e).split())}); {last}; free space there and run again") from e


def save(engine, module, run_cfg, model_config, step: int, data_state: dict, ckpt_dir: Path, keep: int,
         tp_rank: int, tp: int, pp: int, stage: int, dp_rank: int, hf: Optional[dict] = None) -> Path:
    """Write a checkpoint collectively; every rank calls it. Returns the final folder."""
    staging = ckpt_dir / ".staging"
    name = tag(step)
    rank = dist.get_rank()
    if rank == 0:
        shutil.rmtree(staging / name, ignore_errors=True)
        with _writing(ckpt_dir, name):
            (staging / name).mkdir(parents=True, exist_ok=True)
    dist.barrier()
    with _writing(ckpt_dir, name):
        # one writer per (TP rank, stage)
        part = _write_shards(staging / name, engine, module, model_config, tp_rank, tp, stage, write=dp_rank == 0)
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, (part, (dp_rank, data_state), rng_state()))
    if rank == 0:
        weight_map, known = {}, {}
        for p, _, _ in parts:
            if p is None:
                continue
            for n in p["names"]:
                weight_map.setdefault(n, p["stage"])
            for folder, info in p["info"].items():
                known.setdefault(folder, {})[p["file"]] = info
        specs = specs_for(model_config, tp)
        stages = [sorted({specs[n].layer for n, s in weight_map.items() if s == st and specs[n].layer is not None})
                  for st in range(pp)]
        with _writing(ckpt_dir, name):
            keep_side_files(run_cfg.model.source, staging / name / "model")  # the tokenizer exports with it
            for folder, files in known.items():
                write_manifest(staging / name / folder, manifest_body(
                    model_config, tp, pp, stages, weight_map, hf if folder == "model" else None), files)
        meta = {"step": step, "run_config": run_cfg.to_dict(), "model_config": model_config.to_dict(),
                # every DP rank holds the same layout-free position (statex_dist.data.pipeline)
                "data": {str(d[0]): d[1] for _, d, _ in parts},
                "rng": {str(r): s for r, (_, _, s) in enumerate(parts)}, "world_size": dist.get_world_size(),
                "tp": tp, "pp": pp, "layout": layout(run_cfg, dist.get_world_size()), "deepspeed": False,
                "optimizer": {"adam_step": optimizer_state.adam_step(engine)}}
        if os.environ.get("STATEX_KILL_DURING_SAVE_STEP") == str(step):
            # fault injection for the resume tests: die as a real crash would, mid-checkpoint
            import signal
            os.kill(os.getpid(), signal.SIGKILL)
        tmp = staging / name / (META + ".tmp")
        with _writing(ckpt_dir, name):
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, staging / name / META)
        final = ckpt_dir / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging / name, final)
        for old in complete_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return ckpt_dir / name


def resume_point(resume: str, ckpt_dir: Path) -> Optional[Path]:
    if resume == "none":
        return None
    if resume != "auto":
        p = Path(resume)
        if not (p / META).exists():
            raise FileNotFoundError(f"{p}: not a complete checkpoint (no {META}); pass a step folder or 'auto'")
        return p
    found = complete_checkpoints(ckpt_dir)
    return found[-1] if found else None


def read_meta(path: Path) -> dict:
    return json.loads((path / META).read_text())


def load(engine, path: Path) -> dict:
    """Restore DeepSpeed's state (model, optimizer, scheduler) from DeepSpeed's own files in ``path``, which
    checkpoints written before the layout-free format became the only one hold, saved with the same layout;
    returns this project's metadata."""
    meta = read_meta(path)
    engine.load_checkpoint(str(path.parent), tag=path.name, load_module_strict=True)
    st = meta["rng"].get(str(dist.get_rank()))
    if st is not None:
        set_rng_state(st)
    return meta
