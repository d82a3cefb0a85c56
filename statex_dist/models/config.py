"""What every model configuration shares, and the reading of one from a dict.

Each architecture's config class (``statex_dist/archs/<name>/config.py``) derives from :data:`ModelConfig`.
Every per-layer quantity (GLA heads, Mamba2 d_state) is a list, because a StateX model differs from layer to
layer; the rest is shared by all layers.

Field names follow this project; the checkpoint readers (each architecture's Hugging Face formats) map the
names of fla's GLAConfig, mamba_ssm's config.json and transformers' Mamba2Config onto them.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from statex_dist import archs


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


@dataclass
class _Common:
    vocab_size: int
    hidden_size: int
    num_layers: int
    tie_word_embeddings: bool = False
    # The checkpoint stores the embedding padded to this multiple (mamba_ssm pads to 16). Logits returned
    # to callers always have ``vocab_size`` columns.
    pad_vocab_multiple: int = 1
    norm_eps: float = 1e-6
    # Which layers a StateX expansion enlarged; informational (the per-layer lists carry the shapes).
    expanded_layers: list[int] = field(default_factory=list)
    arch = ""   # the registry name (statex_dist.archs), set by each subclass

    def checkpoint_vocab_size(self) -> int:
        """Rows of the embedding as stored in the Hugging Face checkpoint."""
        return round_up(self.vocab_size, self.pad_vocab_multiple)

    def padded_vocab_size(self, tp: int = 1) -> int:
        """Rows of the in-memory embedding: the checkpoint's padding, then a multiple of TP."""
        return round_up(self.vocab_size, math.lcm(self.pad_vocab_multiple, tp))

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, **dataclasses.asdict(self)}

    def state_size(self, layer: int) -> int:
        """Recurrent state floats of one layer for one sequence."""
        raise NotImplementedError

    def _check_layers(self, name: str, values: list) -> None:
        if len(values) != self.num_layers:
            raise ValueError(f"{name} has {len(values)} entries but the model has {self.num_layers} layers")


ModelConfig = _Common   # the base of every architecture's config class


def config_from_dict(d: dict[str, Any]) -> ModelConfig:
    """The config of ``d["arch"]`` from the rest of ``d``; ValueError for an unknown architecture or key."""
    d = dict(d)
    arch = d.pop("arch", None)
    cls = archs.get(arch).config_class
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {arch} config keys {unknown}; known: {sorted(names)}")
    return cls(**d)
