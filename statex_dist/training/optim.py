"""AdamW with weight decay on matrices only, optional freezing of the unexpanded layers, and the cosine
schedule with linear warm-up (the paper's recipe)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from statex_dist.models import specs_for
from statex_dist.models.names import named_internal_parameters


def freeze_unexpanded(model: nn.Module, expanded: list[int]) -> int:
    """Leave only the layers ``expanded`` trainable (a parameter's layer is its ShardSpec's); returns the
    number of trainable parameters left. ``model``: a CausalLM or the pipeline's PipelineModule."""
    keep = set(expanded)
    config = getattr(model, "model_config", None) or model.config
    specs = specs_for(config, 1)  # the owning layer does not depend on TP
    n = 0
    for name, p in named_internal_parameters(model):
        p.requires_grad_(specs[name].layer in keep)
        n += p.numel() if p.requires_grad else 0
    return n


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices (and embeddings) decay; norms, biases, gate vectors (A_log, D, dt_bias) and conv kernels'
    1-d companions do not: decay pulls them away from their meaningful constants."""
    decay, no_decay = [], []
    for _, p in named_internal_parameters(model):
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def adamw(model: nn.Module, opt_cfg) -> torch.optim.Optimizer:
    """torch's fused AdamW (CPU and CUDA): one pass over each tensor. The per-tensor path makes two
    temporaries of the tensor's size (sqrt of the second moment, then its quotient), and under ZeRO that tensor
    is the rank's whole flat partition: 8 bytes a parameter on top of the step's peak."""
    return torch.optim.AdamW(param_groups(model, opt_cfg.weight_decay), lr=opt_cfg.lr,
                             betas=tuple(opt_cfg.betas), eps=opt_cfg.eps, fused=True)


def cosine_with_warmup(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based): linear warm-up, cosine to min_ratio."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def scheduler(optimizer: torch.optim.Optimizer, sched_cfg, peak_lr: float):
    ratio = sched_cfg.min_lr / peak_lr if peak_lr else 0.0
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_with_warmup(s, sched_cfg.warmup_steps, sched_cfg.total_steps, ratio))
