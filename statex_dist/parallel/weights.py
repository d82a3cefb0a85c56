"""Moving full tensors in and out of a TP-sharded model through its ShardSpecs."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import torch
import torch.distributed as dist
import torch.nn as nn

from statex_dist.parallel import state
from statex_dist.parallel.sharding import ShardSpec


@torch.no_grad()
def copy_shards(named: Iterable[tuple[str, nn.Parameter]], get: Callable[[str], torch.Tensor],
                specs: Mapping[str, ShardSpec], tp_rank: int, tp: int) -> None:
    """Copy this rank's slice of ``get(name)`` (a full tensor) into each parameter; vocab rows beyond the
    full tensor's (TP padding) are zeros."""
    for name, p in named:
        spec = specs[name]
        p.copy_(spec.shard(spec.pad_rows(get(name)).to(p.dtype), tp_rank, tp, name))


def load_full(model: nn.Module, full: Mapping[str, torch.Tensor], specs: Mapping[str, ShardSpec]) -> None:
    """Copy this rank's slice of each full tensor into the model (names are the model's own)."""
    copy_shards(model.named_parameters(), full.__getitem__, specs, state.tp_rank(), state.tp_size())


def gather_full(model: nn.Module, specs: Mapping[str, ShardSpec],
                pick: Callable[[nn.Parameter], torch.Tensor] = lambda p: p.detach()) -> dict[str, torch.Tensor]:
    """Every parameter (or what ``pick`` returns for it, e.g. its grad) at full shape, on every TP rank."""
    tp, group = state.tp_size(), state.tp_group()
    out = {}
    for name, p in model.named_parameters():
        local = pick(p).contiguous()
        if tp == 1 or specs[name].dim is None:
            out[name] = local.clone()
            continue
        pieces = [torch.empty_like(local) for _ in range(tp)]
        dist.all_gather(pieces, local, group=group)
        out[name] = specs[name].unshard(pieces, name)
    return out
