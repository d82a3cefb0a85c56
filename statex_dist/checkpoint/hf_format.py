"""What a Hugging Face checkpoint format must say: how its config.json maps to ours, its tensor names, and
how its weights file is written.

Each format (fla GLA, mamba_ssm Mamba2, transformers Mamba2) is a subclass in its architecture's folder
(``statex_dist/archs/<name>/*_format.py``). The per-layer StateX shapes travel in extra config.json keys
(``statex_*``) that the stock classes ignore.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

from statex_dist.checkpoint.stream_writer import StreamingSafetensorsWriter
from statex_dist.models.config import ModelConfig


def json_float(x: Any) -> float:
    """transformers 5 writes inf as {"__float__": "Infinity"}; older writers use a bare Infinity."""
    if isinstance(x, dict) and "__float__" in x:
        return float(x["__float__"])
    return float(x)


def json_safe_float(x: float) -> Any:
    return {"__float__": "Infinity"} if math.isinf(x) else x


EXPANDED_KEY = "statex_expanded_layers"


class HFFormat:
    """Base: subclasses set ``name``, ``arch``, ``prefix``, ``description`` and implement the three methods."""
    name: str = ""
    arch: str = ""
    description = ""    # how a reader tells it, in the message for a folder no format matches
    weights_file = "model.safetensors"
    per_layer_key = ""  # the config.json key of the per-layer StateX shape (heads or d_state of each layer)
    # the format an export whose layers differ is written in instead, when the remote code does not read
    # this one's names (statex_dist.checkpoint.remote_code); None: this one
    remote_code_format: Optional[type["HFFormat"]] = None

    @classmethod
    def read_per_layer(cls, hf_cfg: dict, uniform: int, layers: int) -> list[int]:
        """Each layer's value of the per-layer shape: its ``statex_*`` list, else the stock key's ``uniform``."""
        return list(hf_cfg.get(cls.per_layer_key) or [uniform] * layers)

    @staticmethod
    def read_expanded(hf_cfg: dict) -> list[int]:
        return list(hf_cfg.get(EXPANDED_KEY, []))

    @classmethod
    def write_statex_keys(cls, hf_cfg: dict, per_layer: list[int], expanded: list[int]) -> bool:
        """Set the ``statex_*`` keys of ``hf_cfg`` for this model (dropping a base config's stale ones); the
        per-layer list only where layers differ. Returns whether they differ."""
        for k in (cls.per_layer_key, EXPANDED_KEY):
            hf_cfg.pop(k, None)
        differ = len(set(per_layer)) > 1
        if differ:
            hf_cfg[cls.per_layer_key] = list(per_layer)
        if expanded:
            hf_cfg[EXPANDED_KEY] = list(expanded)
        return differ

    @classmethod
    def matches(cls, hf_cfg: dict) -> bool:
        raise NotImplementedError

    @classmethod
    def read_config(cls, hf_cfg: dict) -> ModelConfig:
        raise NotImplementedError

    @classmethod
    def write_config(cls, config: ModelConfig, base: dict | None = None) -> dict:
        raise NotImplementedError

    @classmethod
    def hf_names(cls, internal: str, config: ModelConfig) -> list[str]:
        """Candidate checkpoint names of an internal parameter, the one this format writes first."""
        return [cls.prefix + internal]

    @classmethod
    def optional(cls, hf_name: str, config: ModelConfig) -> bool:
        """Checkpoint tensors that may be present and are not model parameters (tied copies, buffers)."""
        return False

    @classmethod
    def write_weights(cls, folder: Path, config: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor]],
                      dtypes: dict[str, torch.dtype], shapes: dict[str, tuple[int, ...]],
                      progress: Optional[Callable] = None) -> None:
        """Stream full tensors (internal names, in ``shapes``' order, each of its checkpoint shape there)
        into ``folder / weights_file`` under this format's names, each cast to its ``dtypes`` entry."""
        entries = [(cls.hf_names(n, config)[0], dtypes[n], shape) for n, shape in shapes.items()]
        writer = StreamingSafetensorsWriter(folder / cls.weights_file, entries, {"format": "pt"})
        try:
            for name, t in tensors:
                writer.write(cls.hf_names(name, config)[0], t.to(dtypes[name]))
                if progress is not None:
                    progress(name, t)
            writer.close()
        except BaseException:
            writer.abort()
            raise
