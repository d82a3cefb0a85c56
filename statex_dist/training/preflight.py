"""Everything a run can check without peers, in one function: the device, the kernels, the weight source, the
layout against the model, the shards, the resume point.

The launcher runs it once before it starts any process (``python -m statex_dist.train --preflight``), so a
bad input is one line rather than one line per rank; every rank runs it again as the first step of its
``Run`` (it only reads configs and manifests).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from statex_dist import archs
from statex_dist.data import check_shards
from statex_dist.data.blend import check_blend
from statex_dist.eval.config import EvalConfig
from statex_dist.models.validate import check_parallel_sizes
from statex_dist.ops import kernel_summary, resolve_kernels
from statex_dist.parallel import device as devices
from statex_dist.run_config import check_segments
from statex_dist.training import checkpoints
from statex_dist.training.ds_setup import dtype_of
from statex_dist.training.initial_weights import WeightSource, weight_source


@dataclass
class Preflight:
    device: devices.Device
    dtype: torch.dtype
    kernels: dict[str, str]       # op -> the implementation it runs with on this device
    source: WeightSource
    train_shards: object           # the manifest check's summary (data.blend.Blend: its folders, seq_len)
    ckpt_dir: Path
    resume: Optional[Path]         # the checkpoint the run continues from
    meta: Optional[dict]           # its metadata

    @property
    def model_config(self):
        return self.source.config

    def first_line(self, run_cfg, world: int, backend: str) -> str:
        """Device, backend, dtype, layout and kernels: the first line a run prints."""
        p = run_cfg.parallel
        dtype = {torch.float32: "fp32", torch.bfloat16: "bf16"}[self.dtype]
        cp = f" CP={p.cp}" if p.cp > 1 else ""
        return (f"device {self.device.name} | backend {backend} | dtype {dtype} | TP={p.tp} PP={p.pp}{cp} DP={p.dp(world)} "
                f"ZeRO-{p.zero_stage} on {world} process{'es' if world > 1 else ''} | "
                f"{kernel_summary(self.device.type, kernel_ops(self.model_config))}")


    def tokens_per_step(self, run_cfg) -> int:
        """Tokens an optimizer step trains on: the global batch of the shards' sequences."""
        return run_cfg.data.global_batch * self.train_shards.seq_len

    def tokens_line(self, run_cfg, world: int) -> str:
        """The tokens a step takes, and how: the second line a run prints."""
        d, p = run_cfg.data, run_cfg.parallel
        gas = d.global_batch // (d.micro_batch * p.dp(world))
        T = self.train_shards.seq_len
        cp = f", each in {p.cp} segments of {T // p.cp} (one a CP rank)" if p.cp > 1 else ""
        return (f"{self.tokens_per_step(run_cfg):,} tokens a step: {d.global_batch} sequences of {T} tokens{cp}, "
                f"{gas} micro-batch{'es' if gas > 1 else ''} of {d.micro_batch} per DP rank")


def kernel_ops(model_config) -> tuple[str, ...]:
    """The ops of statex_dist.ops the model calls (its architecture's)."""
    return archs.of(model_config).kernel_ops(model_config)


def preflight(run_cfg, world: int) -> Preflight:
    """The checks, in the order a run needs their answers; each error names the key or file and the fix."""
    dev = devices.select(run_cfg.parallel.device)
    source = weight_source(run_cfg)
    model_config = source.config
    kernels = resolve_kernels(dev.type, kernel_ops(model_config))
    p = run_cfg.parallel
    check_parallel_sizes(model_config, p.tp, p.pp, world)
    train_shards = check_blend(run_cfg.data.train)
    if run_cfg.data.seq_len not in (None, train_shards.seq_len):
        raise ValueError(f"data.seq_len={run_cfg.data.seq_len} but the shards of data.train={run_cfg.data.train} "
                         f"hold sequences of {train_shards.seq_len} tokens (their manifest.json); set "
                         f"data.seq_len={train_shards.seq_len}, or leave it out (the shards decide), or point "
                         f"data.train at shards made with --seq-len {run_cfg.data.seq_len}")
    check_segments(train_shards.seq_len, p, f"the training shards' sequence length {train_shards.seq_len} "
                                            f"({run_cfg.data.train})")
    if run_cfg.data.valid:
        check_shards(run_cfg.data.valid)
    EvalConfig.from_run(run_cfg)  # reads the source's MQAR offset: a damaged record stops here, not at step N
    ckpt_dir = Path(run_cfg.checkpoint.dir or Path(run_cfg.logging.dir) / "checkpoints")
    resume = checkpoints.resume_point(run_cfg.checkpoint.resume, ckpt_dir)
    meta = checkpoints.read_meta(resume) if resume is not None else None
    if meta is not None:
        diff = checkpoints.config_differences(meta["model_config"], model_config.to_dict())
        if diff:
            raise ValueError(
                f"{resume}: a checkpoint of another model than this run's ({'; '.join(diff)}); point "
                f"model.source / expansion at the same model or set checkpoint.resume=none")
    return Preflight(dev, dtype_of(run_cfg, dev), kernels, source, train_shards, ckpt_dir, resume, meta)
