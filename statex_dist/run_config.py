"""The run configuration: YAML files in configs/ plus ``key.sub=value`` overrides; unknown keys are errors.

Sections mirror the path of one training run: model source -> expansion -> parallel layout -> optimizer
and schedule -> data -> eval -> logging -> checkpoints. Defaults below are the paper's recipe where it has
one (AdamW 3e-4, betas 0.9/0.95, wd 0.1 on matrices, cosine to 0, 1,000 warm-up steps, clip 1.0).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


@dataclass
class ModelSection:
    source: str = ""             # HF folder or sharded checkpoint, or "scratch" (then `config` below)
    config: Optional[dict] = None  # model config (arch, sizes) for source=scratch
    gate_bias_init: Optional[list[float]] = None  # scratch GLA: gate bias U(lo, hi), a long initial memory
    dtype: str = "auto"          # auto: bf16 on CUDA, fp32 on the CPU


@dataclass
class ExpansionSection:
    enabled: bool = False
    every: Optional[int] = None  # layers 0, K, 2K, ... (default 6 when enabled and no list)
    layers: Optional[list[int]] = None
    gla_heads: int = 1
    d_state: Optional[int] = None
    init: str = "reinit"
    seed: int = 0
    gate_bias_init: Optional[list[float]] = None


@dataclass
class ParallelSection:
    tp: int = 1
    pp: int = 1
    zero_stage: int = 1
    activation_checkpointing: bool = False
    sequence_parallel: bool = False  # split norms / residuals over TP along time (no-op at tp=1; not with pp>1)


@dataclass
class OptimizerSection:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    freeze_unexpanded: bool = False  # train only the expanded layers


@dataclass
class ScheduleSection:
    total_steps: int = 20000
    warmup_steps: int = 1000
    min_lr: float = 0.0


@dataclass
class DataSection:
    train: str = ""              # folder of webdataset shards made by tools/make_shards.py
    valid: str = ""              # held-out shards for perplexity (optional)
    seq_len: int = 65536
    micro_batch: int = 1
    global_batch: int = 8        # sequences per optimizer step, over all DP ranks and accumulation
    workers: int = 2
    shuffle_buffer: int = 1000
    seed: int = 1234


@dataclass
class EvalSection:
    every: int = 0               # 0: only at the end
    tasks: list[str] = field(default_factory=lambda: ["ppl"])   # ppl, mqar, passkey, niah
    batches: int = 8             # held-out micro-batches for perplexity
    mqar_pairs: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    mqar_n: int = 256            # sequences per pair count
    vocab_offset: int = 0        # where MQAR's 0-255 token block starts in the model's vocabulary
    lengths: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])   # passkey / niah contexts
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    grid_n: int = 10             # examples per (length, depth) cell


@dataclass
class LoggingSection:
    dir: str = "runs/default"
    every: int = 10


@dataclass
class CheckpointSection:
    dir: str = ""                # default: <logging.dir>/checkpoints
    every: int = 1000
    keep: int = 3
    resume: str = "auto"         # auto: the newest complete checkpoint in dir, if any; or a path; or "none"


@dataclass
class RunConfig:
    name: str = "run"
    seed: int = 1234
    model: ModelSection = field(default_factory=ModelSection)
    expansion: ExpansionSection = field(default_factory=ExpansionSection)
    parallel: ParallelSection = field(default_factory=ParallelSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    data: DataSection = field(default_factory=DataSection)
    eval: EvalSection = field(default_factory=EvalSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping, found {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key{'s' if len(unknown) > 1 else ''} "
                         f"{', '.join((where + '.' if where else '') + k for k in unknown)}; "
                         f"known in {where or 'the top level'}: {sorted(fields)}")
    kwargs = {}
    for k, v in data.items():
        f = fields[k]
        if dataclasses.is_dataclass(f.default_factory() if f.default_factory is not dataclasses.MISSING else None):
            kwargs[k] = _build(type(f.default_factory()), v or {}, f"{where}.{k}" if where else k)
        else:
            kwargs[k] = v
    return cls(**kwargs)


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted}: {k} is not a section")
    node[keys[-1]] = value


def load_run_config(path: Optional[str | os.PathLike], overrides: list[str] = ()) -> RunConfig:
    """Read a YAML file (or none: all defaults) and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    tree: dict = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such config file; the shipped ones are in configs/")
        tree = yaml.safe_load(p.read_text()) or {}
    for o in overrides:
        if "=" not in o:
            raise ValueError(f"override {o!r}: expected key.sub=value")
        k, v = o.split("=", 1)
        _set(tree, k.strip(), yaml.safe_load(v))
    cfg = _build(RunConfig, tree, "")
    validate(cfg)
    return cfg


def validate(cfg: RunConfig) -> None:
    """Impossible combinations, before any process group exists."""
    p = cfg.parallel
    if p.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"parallel.zero_stage={p.zero_stage}: DeepSpeed ZeRO stages are 0, 1, 2, 3")
    if p.pp > 1 and p.zero_stage > 1:
        raise ValueError(f"parallel.zero_stage={p.zero_stage} with parallel.pp={p.pp}: DeepSpeed's pipeline "
                         f"engine supports ZeRO stage 0 or 1 only; use zero_stage=1")
    if p.sequence_parallel and p.tp > 1 and p.pp > 1:
        # the pipeline engine slices the activations it sends over TP, assuming TP ranks hold equal copies
        raise ValueError(f"parallel.sequence_parallel=true with parallel.pp={p.pp}: sequence parallelism is "
                         f"implemented for TP without a pipeline; set parallel.pp=1 or "
                         f"parallel.sequence_parallel=false")
    if cfg.schedule.warmup_steps > cfg.schedule.total_steps:
        raise ValueError(f"schedule.warmup_steps={cfg.schedule.warmup_steps} exceeds "
                         f"schedule.total_steps={cfg.schedule.total_steps}")
    if cfg.data.global_batch % cfg.data.micro_batch:
        raise ValueError(f"data.global_batch={cfg.data.global_batch} is not a multiple of "
                         f"data.micro_batch={cfg.data.micro_batch}")
    if cfg.model.dtype not in ("auto", "fp32", "bf16"):
        raise ValueError(f"model.dtype={cfg.model.dtype!r}: use auto, fp32 or bf16")
