"""Recognise a Hugging Face folder's format and load its tensors into a (possibly TP-sharded) model."""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from statex_dist import archs
from statex_dist.checkpoint.errors import CheckpointError, MissingCheckpointError
from statex_dist.checkpoint.hf_format import HFFormat
from statex_dist.checkpoint.tensor_files import TensorReader, read_json
from statex_dist.models import specs_for
from statex_dist.models.config import ModelConfig
from statex_dist.parallel.sharding import ShardSpec


def detect_format(folder: str | os.PathLike) -> tuple[type[HFFormat], dict]:
    folder = Path(folder)
    if not folder.exists():
        raise MissingCheckpointError(f"{folder}: does not exist (not a folder); pass the checkpoint's directory")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a folder; pass the checkpoint's directory")
    hf_cfg = read_json(folder / "config.json")
    for fmt in archs.FORMATS:
        if fmt.matches(hf_cfg):
            return fmt, hf_cfg
    known = [f.description for f in archs.FORMATS]
    raise CheckpointError(
        f"{folder / 'config.json'}: unknown architecture (model_type={hf_cfg.get('model_type')!r}, "
        f"architectures={hf_cfg.get('architectures')}); supported: {', '.join(known[:-1])} and {known[-1]}")


def read_hf_config(folder: str | os.PathLike) -> tuple[type[HFFormat], ModelConfig]:
    fmt, hf_cfg = detect_format(folder)
    try:
        return fmt, fmt.read_config(hf_cfg)
    except KeyError as e:
        raise CheckpointError(f"{Path(folder) / 'config.json'}: missing key {e} for a {fmt.name} config") from e
    except ValueError as e:
        raise CheckpointError(f"{Path(folder) / 'config.json'}: {e}") from e


def checkpoint_shape(config: ModelConfig, name: str) -> tuple[int, ...]:
    """A tensor's shape in a checkpoint file (``ShardSpec.checkpoint_shape``)."""
    return specs_for(config, 1)[name].checkpoint_shape


def find_tensor(reader: TensorReader, fmt: type[HFFormat], name: str, config: ModelConfig) -> str:
    candidates = fmt.hf_names(name, config)
    for hf in candidates:
        if hf in reader:
            return hf
    raise CheckpointError(
        f"{reader.folder}: tensor {candidates[0]!r} is missing (needed for parameter {name}); "
        f"the checkpoint is incomplete or its config.json does not describe it")


def check_tensor(reader: TensorReader, hf: str, want: tuple[int, ...], folder: Path) -> None:
    """The tensor's shape is what the config implies and its dtype a floating-point one (before reading it)."""
    found = reader.shape(hf)
    if tuple(found) != tuple(want):
        raise CheckpointError(
            f"{reader.file_of(hf)}: tensor {hf!r} has shape {list(found)} but the config "
            f"({folder / 'config.json'}) implies {list(want)}; the config and weights do not belong together")
    dtype = reader.dtype(hf)
    if not dtype.is_floating_point:
        raise CheckpointError(
            f"{reader.file_of(hf)}: tensor {hf!r} has dtype {str(dtype).removeprefix('torch.')}; model weights "
            f"are floating point (float32, bfloat16, float16): the file is not this model's checkpoint")


def load_hf_into(model: nn.Module, folder: str | os.PathLike, fmt: type[HFFormat], specs: dict[str, ShardSpec]) -> None:
    """Copy every parameter's TP slice from the folder; shapes are checked against ``specs`` first."""
    from statex_dist.parallel import state  # megatron-core: only where a model exists
    config = model.config
    reader = TensorReader(folder)
    rank, tp = state.tp_rank(), state.tp_size()
    params = dict(model.named_parameters())
    if set(params) != set(specs):
        raise RuntimeError(f"model parameters and specs disagree: {sorted(set(params) ^ set(specs))}")
    used = set()
    for name, spec in specs.items():
        hf = find_tensor(reader, fmt, name, config)
        used.add(hf)
        check_tensor(reader, hf, checkpoint_shape(config, name), Path(folder))
        full = reader.get(hf)
        full = spec.pad_rows(full)
        with torch.no_grad():
            params[name].copy_(spec.shard(full, rank, tp, hf))
    unexpected = sorted(k for k in reader.keys() if k not in used and not fmt.optional(k, config))
    if unexpected:
        raise CheckpointError(
            f"{reader.folder}: tensors the config does not describe: {unexpected[:8]}"
            f"{' ...' if len(unexpected) > 8 else ''}; the config.json does not match the weights")
