"""Parameters under the models' own names (``layers.5.attn.q_proj.weight``), the names every ShardSpec,
checkpoint and optimizer-state file uses, whether the model is one module or one DeepSpeed pipeline stage
(which names them ``5.attn.q_proj.weight``: see ``models/pipeline.internal_names``)."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.nn as nn


def named_internal_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(model's own name, parameter) for a one-module model or one pipeline stage."""
    if hasattr(model, "model_config") and hasattr(model, "_grid"):  # a DeepSpeed PipelineModule stage
        from statex_dist.models.pipeline import internal_names
        names = internal_names(model)
        for n, p in model.named_parameters():
            yield names[n], p
    else:
        yield from model.named_parameters()


class Named:
    """(name, tensor) pairs seen as a module's ``named_parameters()``: a stage under the models' own names,
    or plain tensors of the local shapes, for what reads a model by name (``ShardedCheckpoint.load_into``,
    ``parallel.weights.load_full`` / ``gather_full``)."""

    def __init__(self, pairs: Iterable[tuple[str, torch.Tensor]]):
        self.pairs = list(pairs)

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        return iter(self.pairs)


def by_internal_name(model: nn.Module) -> Named:
    return Named(named_internal_parameters(model))
