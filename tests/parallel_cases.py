"""Shared pieces of the multi-process tests: small model configs, reference weights, one SGD step."""
from __future__ import annotations

import torch

from statex_dist.config import GLAConfig, Mamba2Config, config_from_dict

LR = 0.5

CASES = {
    # 4-head and merged 1-head layers: head-sharded and value-sharded at TP=2
    "gla-mixed": GLAConfig(vocab_size=101, hidden_size=64, num_layers=4, num_heads=[4, 1, 4, 1],
                           use_short_conv=True, tie_word_embeddings=False),
    "gla-tied": GLAConfig(vocab_size=96, hidden_size=64, num_layers=2, num_heads=[2, 1], expand_k=1.0,
                          tie_word_embeddings=True),
    # ngroups 1: B/C whole on every rank, gated norm spanning ranks; mixed d_state per layer
    "mamba2-g1": Mamba2Config(vocab_size=101, hidden_size=64, num_layers=2, d_state=[16, 32], headdim=16,
                              ngroups=1, chunk_size=8, tie_word_embeddings=True, pad_vocab_multiple=16),
    "mamba2-g2": Mamba2Config(vocab_size=100, hidden_size=64, num_layers=2, d_state=[8, 24], headdim=16,
                              ngroups=2, chunk_size=8, tie_word_embeddings=False),
}


def reference_weights(cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    """Full-shape weights from a TP=1 model, norms and biases perturbed away from their constants."""
    from statex_dist.models import build_model
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(("bias", ".D")):
                p.add_(0.1 * torch.randn_like(p))
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def batch(cfg, B: int = 4, T: int = 19, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (B, T + 1), generator=g)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


def single_process(cfg, weights, ids, labels):
    """Loss, full gradients and SGD-updated weights of the one-process model."""
    from statex_dist.models import build_model, specs_for
    from statex_dist.parallel.weights import load_full
    model = build_model(cfg, init=False)
    load_full(model, weights, specs_for(cfg, 1))
    loss = model(ids, labels=labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    new = {n: (p - LR * p.grad).detach() for n, p in model.named_parameters()}
    return loss.item(), grads, new


def tp_dp_worker(rank, world, tp, cfg_dict, weights, ids, labels):
    """One rank of a TP x DP run without a pipeline: returns (loss, full grads, full weights after SGD)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from statex_dist.models import build_model, specs_for
    from statex_dist.parallel import state
    from statex_dist.parallel.weights import gather_full, load_full
    state.initialize(tp, 1)
    cfg = config_from_dict(cfg_dict)
    specs = specs_for(cfg, tp)
    model = build_model(cfg, init=False)
    load_full(model, weights, specs)
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    n = ids.shape[0] // dp
    loss = model(ids[dp_rank * n:(dp_rank + 1) * n], labels=labels[dp_rank * n:(dp_rank + 1) * n])
    loss.backward()
    dpg = ps.get_data_parallel_group()
    for p in model.parameters():
        dist.all_reduce(p.grad, group=dpg)
        p.grad /= dp
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss, group=dpg)
    grads = gather_full(model, specs, lambda p: p.grad)
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    new = gather_full(model, specs)
    keep = rank == 0
    state.destroy()
    return (mean_loss.item() / dp, grads, new) if keep else None
