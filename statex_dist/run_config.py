"""The run configuration: YAML files in configs/ plus ``key.sub=value`` overrides; unknown keys are errors.

Sections mirror the path of one training run: model source -> expansion -> parallel layout -> optimizer
and schedule -> data -> eval -> logging -> checkpoints. Defaults below are the paper's recipe where it has
one (AdamW 3e-4, betas 0.9/0.95, wd 0.1 on matrices, cosine to 0, 1,000 warm-up steps, clip 1.0).
"""
from __future__ import annotations

import dataclasses
import os
import signal
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import Field

from statex_dist.eval.config import TASKS, EvalConfig

# Types with their ranges: each field's annotation is what a value is converted to and checked against.
Positive = Annotated[int, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Beta = Annotated[float, Field(ge=0, lt=1)]
Fraction = Annotated[float, Field(ge=0, le=1)]


@dataclass
class ModelSection:
    source: str = ""             # HF folder or sharded checkpoint, or "scratch" (then `config` below)
    config: Optional[dict] = None  # model config (arch, sizes) for source=scratch
    gate_bias_init: Optional[Annotated[list[float], Field(min_length=2, max_length=2)]] = None  # scratch GLA: gate bias U(lo, hi)
    dtype: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on a GPU, fp32 on the CPU (parallel.device)


@dataclass
class ExpansionSection:
    enabled: bool = False
    every: Optional[Positive] = None  # layers 0, K, 2K, ... (default 6 when enabled and no list)
    layers: Optional[list[Count]] = None
    heads: Optional[Positive] = None   # GLA and Gated DeltaNet: heads of an expanded layer (default 1)
    gla_heads: Optional[Positive] = None   # the earlier name of heads
    d_state: Optional[Positive] = None
    init: str = "reinit"         # checked against the architecture's modes (archs.get(arch).expansion.modes)
    seed: int = 0
    gate_bias_init: Optional[Annotated[list[float], Field(min_length=2, max_length=2)]] = None


@dataclass
class ParallelSection:
    device: Literal["auto", "cuda", "cpu"] = "auto"  # auto: cuda when torch can use a GPU (statex_dist/parallel/device.py)
    tp: Positive = 1
    pp: Positive = 1
    zero_stage: Literal[0, 1, 2, 3] = 1  # DeepSpeed ZeRO stage
    activation_checkpointing: bool = False
    sequence_parallel: bool = False  # split norms / residuals over TP along time (no-op at tp=1; not with pp>1)
    cp: Positive = 1  # context parallelism: each sequence in cp contiguous segments, one a rank (parallel/context.py)

    def dp(self, world: int) -> int:
        """Data-parallel ranks of a job of ``world`` processes (TP x CP x DP x PP)."""
        return world // (self.tp * self.pp * self.cp)


@dataclass
class OptimizerSection:
    lr: PositiveFloat = 3e-4
    betas: Annotated[list[Beta], Field(min_length=2, max_length=2)] = field(default_factory=lambda: [0.9, 0.95])
    eps: PositiveFloat = 1e-8
    weight_decay: NonNegFloat = 0.1
    grad_clip: NonNegFloat = 1.0  # 0: no clipping
    freeze_unexpanded: bool = False  # train only the expanded layers


@dataclass
class ScheduleSection:
    total_steps: Positive = 20000
    warmup_steps: Count = 1000
    min_lr: NonNegFloat = 0.0


@dataclass
class DataSection:
    train: str = ""              # shard folder (tools/make_shards.py), http(s):// or pipe:CMD one, or blend "0.7 A 0.3 B"
    valid: str = ""              # held-out shards for perplexity (optional)
    seq_len: Optional[Positive] = None  # tokens a sequence; the shards' manifest decides, this checks it
    micro_batch: Positive = 1
    global_batch: Positive = 8   # sequences per optimizer step, over all DP ranks and accumulation
    workers: Count = 2           # loader processes per rank; the sample order does not depend on them
    shuffle_buffer: Count = 1000  # samples in the shuffle buffers of all virtual readers together
    virtual_readers: Optional[Positive] = None  # the data order's readers (default: from the shard count); see data/pipeline.py
    seed: int = 1234


@dataclass
class EvalSection:
    # The defaults are EvalConfig's (statex_dist/eval/config.py), which EvalConfig.from_run maps these keys onto.
    every: Count = 0             # 0: only at the end
    # perplexity only: the one task cheap enough to repeat every `every` steps of a long run
    tasks: list[Literal[TASKS]] = field(default_factory=lambda: ["ppl"])
    batches: Positive = EvalConfig.ppl_batches  # held-out micro-batches for perplexity
    mqar_pairs: list[Positive] = field(default_factory=lambda: list(EvalConfig.mqar_pairs))
    mqar_n: Positive = EvalConfig.mqar_n         # sequences per pair count
    # where MQAR's 0-255 token block starts in the model's vocabulary; null: the offset model.source was
    # trained with (its pretrain.json), else 0
    vocab_offset: Optional[Count] = None
    lengths: list[Positive] = field(default_factory=lambda: list(EvalConfig.lengths))   # passkey / niah contexts
    depths: list[Fraction] = field(default_factory=lambda: list(EvalConfig.depths))
    grid_n: Positive = EvalConfig.grid_n         # examples per (length, depth) cell
    segment_len: Optional[Positive] = EvalConfig.segment_len  # tokens per forward pass, state carried; null: whole


@dataclass
class LoggingSection:
    dir: str = "runs/default"
    every: Positive = 10


@dataclass
class CheckpointSection:
    dir: str = ""                # default: <logging.dir>/checkpoints
    every: Count = 1000          # 0: only at the end
    keep: Count = 3              # 0: keep all
    resume: str = "auto"         # auto: the newest complete checkpoint in dir, if any; or a path; or "none"
    # on these signals (a scheduler's warning) every rank checkpoints the step it is in and the run stops; []: none
    save_on_signal: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])


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


class ConfigError(ValueError):
    """A run-config value that cannot be used; the message names the key, the value and its origin."""


def _leaf_adapter(cls, name: str):
    """pydantic's converter for field ``name`` of section ``cls`` (lax mode: "3e-4" -> 3e-4, "true" -> True).

    pydantic rather than hand-written casts: it knows every typing form the sections use (Optional, lists
    of floats, dicts) and the range annotations below, and says in words what it expected.
    """
    from pydantic import ConfigDict, TypeAdapter
    return TypeAdapter(typing.get_type_hints(cls, include_extras=True)[name],
                       config=ConfigDict(coerce_numbers_to_str=True))  # data.train=123 is a path, not an error


def _convert(cls, name: str, value: Any, key: str, origin: str) -> Any:
    from pydantic import ValidationError
    try:
        return _leaf_adapter(cls, name).validate_python(value)
    except ValidationError as e:
        err = e.errors()[0]
        where = "".join(f"[{i}]" for i in err["loc"])
        raise ConfigError(f"{key}{where}={err['input']!r} (from {origin}): {err['msg'].lower()}") from None


def _build(cls, data: dict, where: str, origins: dict[str, str]):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, found {type(data).__name__} "
                          f"(from {origins.get(where, 'the config')})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join((where + '.' if where else '') + k for k in unknown)}; "
                          f"known in {where or 'the top level'}: {sorted(fields)}")
    kwargs = {}
    for k, v in data.items():
        f = fields[k]
        key = f"{where}.{k}" if where else k
        if dataclasses.is_dataclass(f.default_factory() if f.default_factory is not dataclasses.MISSING else None):
            kwargs[k] = _build(type(f.default_factory()), v or {}, key, origins)
        else:
            kwargs[k] = _convert(cls, k, v, key, origins.get(key, "the config"))
    return cls(**kwargs)


def _set(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {k} is not a section")
    node[keys[-1]] = value


def _leaves(tree: dict, prefix: str = ""):
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and k != "config":  # model.config is one value (a dict), not a section
            yield from _leaves(v, key)
        else:
            yield key


def load_run_config(path: Optional[str | os.PathLike], overrides: list[str] = (),
                    world: Optional[int] = None) -> RunConfig:
    """Read a YAML file (or none: all defaults) and apply ``key.sub=value`` overrides (values parsed as YAML).

    Every value is converted to its field's type (YAML reads ``3e-4`` as a string; it becomes 3e-4) and
    checked against the field's range; an error names the key, the value and the file or override.
    ``world`` (default: ``$WORLD_SIZE`` when set) is the process count the batch sizes are checked for.
    """
    tree: dict = {}
    origins: dict[str, str] = {}
    if path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such config file; the shipped ones are in configs/")
        try:
            text = p.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: cannot read the config file ({getattr(e, 'strerror', None) or e}); pass a "
                              f"YAML file such as configs/cpu-gla-tiny.yaml") from None
        try:
            tree = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({' '.join(str(e).split())})") from None
        if tree is None:
            raise ConfigError(f"{p}: the config file is empty; a run needs at least model.source and data.train "
                              f"(start from one of configs/)")
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: expected a mapping of sections, found {type(tree).__name__}")
        origins = {k: str(p) for k in _leaves(tree)}
    for o in overrides:
        if "=" not in o:
            raise ConfigError(f"override {o!r}: expected key.sub=value")
        k, v = o.split("=", 1)
        try:
            value = yaml.safe_load(v)
        except yaml.YAMLError:
            value = v  # the field's converter says what it expected
        _set(tree, k.strip(), value)
        origins[k.strip()] = f"override {o}"
    run_cfg = _build(RunConfig, tree, "", origins)
    if world is None and os.environ.get("WORLD_SIZE", "").isdigit():
        world = int(os.environ["WORLD_SIZE"])
    validate(run_cfg, origins, world)
    return run_cfg


def _from(origins: Optional[dict[str, str]], key: str) -> str:
    """Where a value came from, for the message; nothing when the caller does not know (a built config)."""
    if origins is None:
        return ""
    return f" (from {origins[key]})" if key in origins else " (the default)"


def signal_number(name: str) -> int:
    """A ``checkpoint.save_on_signal`` name: ``"SIGTERM"`` -> 15; ValueError naming the signals that exist."""
    try:
        return int(signal.Signals[name.upper()])
    except KeyError:
        raise ValueError(f"checkpoint.save_on_signal: unknown signal {name!r}; expected names such as SIGTERM, "
                         f"SIGUSR1, SIGUSR2 or SIGINT") from None


def validate(run_cfg: RunConfig, origins: Optional[dict[str, str]] = None, world: Optional[int] = None) -> None:
    """Impossible combinations, before any process group exists; each error names the key, its value, the
    range that would work and where the value came from."""
    o = origins
    p, d = run_cfg.parallel, run_cfg.data
    if p.pp > 1 and p.zero_stage > 1:
        raise ConfigError(f"parallel.zero_stage={p.zero_stage}{_from(o, 'parallel.zero_stage')} with "
                          f"parallel.pp={p.pp}: DeepSpeed's pipeline engine supports ZeRO stage 0 or 1 only; "
                          f"use zero_stage=1")
    if p.sequence_parallel and p.tp > 1 and p.pp > 1:
        # the pipeline engine slices the activations it sends over TP, assuming TP ranks hold equal copies
        raise ConfigError(f"parallel.sequence_parallel=true with parallel.pp={p.pp}{_from(o, 'parallel.pp')}: "
                          f"sequence parallelism is implemented for TP without a pipeline; set parallel.pp=1 or "
                          f"parallel.sequence_parallel=false")
    for name in run_cfg.checkpoint.save_on_signal:
        try:
            signal_number(name)
        except ValueError as e:
            raise ConfigError(f"{e}{_from(o, 'checkpoint.save_on_signal')}") from None
    if run_cfg.schedule.warmup_steps > run_cfg.schedule.total_steps:
        raise ConfigError(f"schedule.warmup_steps={run_cfg.schedule.warmup_steps}{_from(o, 'schedule.warmup_steps')} "
                          f"exceeds schedule.total_steps={run_cfg.schedule.total_steps}; expected 0 .. "
                          f"{run_cfg.schedule.total_steps}")
    # DP is only known from the launcher's process count; without one, a world of one
    model_ranks = p.tp * p.pp * p.cp
    if world and world % model_ranks:
        raise ConfigError(f"{world} processes do not split into TP={p.tp} x PP={p.pp} x CP={p.cp} (parallel.tp, "
                          f"parallel.pp, parallel.cp); expected a multiple of {model_ranks} processes (NPROC)")
    dp = p.dp(world) if world else 1
    per_step = d.micro_batch * dp
    cp = f" x CP {p.cp}" if p.cp > 1 else ""
    if d.global_batch % per_step:
        over = f"data.micro_batch x DP = {d.micro_batch} x {dp}" if dp > 1 else f"data.micro_batch={d.micro_batch}"
        raise ConfigError(f"data.global_batch={d.global_batch}{_from(o, 'data.global_batch')} is not a multiple of "
                          f"{over}{_from(o, 'data.micro_batch')}; expected a multiple of {per_step}"
                          + (f" (DP = WORLD_SIZE {world} / (TP {p.tp} x PP {p.pp}{cp}))" if dp > 1 else ""))
    # Mamba2's chunk size puts no constraint on seq_len: both SSD scans (mamba_ssm's kernel and
    # statex_dist.ops.ssd) pad the last chunk. Sequence parallelism splits every sequence over TP.
    if d.seq_len:
        check_segments(d.seq_len, p, f"data.seq_len={d.seq_len}{_from(o, 'data.seq_len')}")


def check_segments(seq_len: int, p: ParallelSection, what: str) -> None:
    """A sequence splits into parallel.cp segments, and each segment over TP with sequence parallelism."""
    if seq_len % p.cp:
        raise ConfigError(f"{what} does not split into parallel.cp={p.cp} equal segments; expected a multiple "
                          f"of {p.cp}")
    if p.sequence_parallel and p.tp > 1 and (seq_len // p.cp) % p.tp:
        per = f" segments of {seq_len // p.cp} (parallel.cp={p.cp})" if p.cp > 1 else ""
        raise ConfigError(f"{what}{per} does not split over parallel.tp={p.tp} with parallel.sequence_parallel="
                          f"true; expected a multiple of {p.tp * p.cp} (or set parallel.sequence_parallel=false)")


def dump(run_cfg: RunConfig) -> str:
    """The resolved run config as YAML: what ``--print-config`` shows and what a run will use."""
    return yaml.safe_dump(run_cfg.to_dict(), sort_keys=False, default_flow_style=None)


def _type_text(t) -> str:
    """A field annotation in words: ``Annotated[int, Field(gt=0)]`` -> ``int > 0``."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is Annotated:
        ops = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "min_length": "length >=",
               "max_length": "length <="}
        bounds = [f"{word} {getattr(m, k)}" for info in args[1:] for m in getattr(info, "metadata", [])
                  for k, word in ops.items() if getattr(m, k, None) is not None]
        return ", ".join([_type_text(args[0])] + bounds)
    if origin is typing.Union:
        return " or ".join("null" if a is type(None) else _type_text(a) for a in args)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in args)
    if origin is list:
        return f"list of ({_type_text(args[0])})"
    return getattr(t, "__name__", str(t))


def key_table() -> str:
    """Every run-config key with its type, range and default (the ``--help`` of the training entry point)."""
    lines = []
    for top in dataclasses.fields(RunConfig):
        if top.default_factory is not dataclasses.MISSING:
            cls = type(top.default_factory())
            for f in dataclasses.fields(cls):
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                hint = typing.get_type_hints(cls, include_extras=True)[f.name]
                lines.append(f"  {top.name}.{f.name}: {_type_text(hint)} (default: {default!r})")
        else:
            hint = typing.get_type_hints(RunConfig, include_extras=True)[top.name]
            lines.append(f"  {top.name}: {_type_text(hint)} (default: {top.default!r})")
    return "\n".join(lines)
