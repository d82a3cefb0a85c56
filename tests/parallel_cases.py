"""Shared pieces of the multi-process tests: small model configs, reference weights, one SGD step."""
from __future__ import annotations

import torch

from statex_dist.models.config import GLAConfig, Mamba2Config, config_from_dict

LR = 0.5

CASES = {
    # 4-head and merged 1-head layers: head-sharded and value-sharded at TP=2
    "gla-mixed": GLAConfig(vocab_size=101, hidden_size=64, num_layers=4, num_heads=[4, 1, 4, 1],
                           use_short_conv=True, tie_word_embeddings=False),
    "gla-tied": GLAConfig(vocab_size=96, hidden_size=64, num_layers=2, num_heads=[2, 1], expand_k=1.0,
                          tie_word_embeddings=True),
    # ngroups 1 < TP: B/C channels split and all-gathered, gated norm spanning ranks; mixed d_state per layer
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


def tp_dp_worker(rank, world, tp, cfg_dict, weights, ids, labels, sequence_parallel=False):
    """One rank of a TP x DP run without a pipeline: returns (loss, full grads, full weights after SGD)."""
    from statex_dist.parallel import state
    state.initialize(tp, 1)
    out = tp_dp_step(tp, cfg_dict, weights, ids, labels, sequence_parallel)
    state.destroy()
    return out if rank == 0 else None


def tp_dp_step(tp, cfg_dict, weights, ids, labels, sequence_parallel=False):
    """tp_dp_worker's work on groups that already exist: (loss, full grads, full weights after SGD)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from statex_dist.models import build_model, specs_for
    from statex_dist.parallel.weights import gather_full, load_full
    cfg = config_from_dict(cfg_dict)
    specs = specs_for(cfg, tp)
    model = build_model(cfg, init=False, sequence_parallel=sequence_parallel)
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
    return mean_loss.item() / dp, grads, new


def pipeline_worker(rank, world, tp, pp, cfg_dict, weights, ids, labels, micro_batch, grad_accum, clip=0.0,
                    ckpt_interval=0):
    """One rank of a TP x PP x DP run through DeepSpeed's pipeline engine (ZeRO-1, fp32, torch SGD).

    Returns on rank 0: (loss, full grads, full weights after the step, gap between the two copies of a
    tied embedding after the step). Grads are read when the engine reaches its ReduceGrads instruction:
    accumulated over the micro-batches and all-reduced between tied stages, not yet averaged over DP
    (done here), and gone afterwards (ZeRO-1 moves them into its flat partitions). ``clip``: DeepSpeed's
    gradient_clipping (its default is 1.0; 0 gives the plain SGD step of ``single_process``);
    ``ckpt_interval``: activation checkpointing every that many pieces (0: none).
    """
    import deepspeed
    import torch.distributed as dist
    from deepspeed.runtime.pipe import schedule
    from deepspeed.runtime.pipe.engine import PipelineEngine
    from megatron.core import parallel_state as ps

    from statex_dist.models import specs_for
    from statex_dist.models import pipeline as pipe
    from statex_dist.parallel import state
    cfg = config_from_dict(cfg_dict)
    dp = pipe.validate_parallel(cfg, world, tp, pp)  # before any process group
    state.initialize(tp, pp)
    specs = specs_for(cfg, tp)
    module = pipe.pipeline_module(cfg, torch.float32, tp, pp, activation_checkpoint_interval=ckpt_interval)
    pipe.load_full(module, weights, specs)
    ds_config = {
        "train_batch_size": micro_batch * grad_accum * dp, "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum, "zero_optimization": {"stage": 1},
        "zero_allow_untested_optimizer": True,  # torch SGD: the step the reference takes by hand
        "gradient_clipping": clip,
        "fp16": {"enabled": False}, "bf16": {"enabled": False}, "steps_per_print": 10 ** 9,
    }
    engine, *_ = deepspeed.initialize(model=module, optimizer=torch.optim.SGD(module.parameters(), lr=LR),
                                      config=ds_config)

    captured = {}
    reduce_grads = PipelineEngine._INSTRUCTION_MAP[schedule.ReduceGrads]

    def capture_then_reduce(self, *args, **kwargs):
        captured.update({p: p.grad.detach().clone() for p in self.module.parameters()})
        return reduce_grads(self, *args, **kwargs)

    PipelineEngine._INSTRUCTION_MAP[schedule.ReduceGrads] = capture_then_reduce
    dp_rank, n = ps.get_data_parallel_rank(), ids.shape[0] // dp
    mine = ids[dp_rank * n:(dp_rank + 1) * n], labels[dp_rank * n:(dp_rank + 1) * n]
    micro = list(zip(mine[0].split(micro_batch), mine[1].split(micro_batch)))
    loss = engine.train_batch(iter(micro)).item()
    PipelineEngine._INSTRUCTION_MAP[schedule.ReduceGrads] = reduce_grads

    for g in captured.values():
        dist.all_reduce(g, group=ps.get_data_parallel_group())
        g /= dp
    grads = pipe.gather_full(module, specs, lambda p: captured[p])
    new = pipe.gather_full(module, specs)
    tied_gap = 0.0
    if cfg.tie_word_embeddings and pp > 1:
        emb = next(k for k in specs if k.startswith("embedding"))
        stage, copies = pipe.stage_full(module, specs), [None] * pp
        dist.all_gather_object(copies, stage.get(emb), group=ps.get_pipeline_model_parallel_group())
        tied_gap = (copies[0] - copies[-1]).abs().max().item()
    keep = rank == 0
    state.destroy()
    return (loss, grads, new, tied_gap) if keep else None


def pipeline_start_errors_worker(rank, world, cfg_dict):
    """Two start-up mistakes on megatron-core groups TP=1 x PP=``world``, each to fail on every rank
    before DeepSpeed waits on a peer. Returns (error of pipeline_module for ``cfg_dict``, a model too
    short for the stages; error of check_grid_agrees for a DeepSpeed grid of TP=``world``)."""
    from deepspeed.runtime.pipe.topology import PipelineParallelGrid

    from statex_dist.models.pipeline import pipeline_module
    from statex_dist.parallel import state
    from statex_dist.parallel.deepspeed_mpu import check_grid_agrees, ensure_deepspeed_comm, pipeline_topology
    state.initialize(1, world)
    errors = []
    try:
        pipeline_module(config_from_dict(cfg_dict), torch.float32, 1, world)
        errors.append(None)
    except ValueError as e:
        errors.append(str(e))
    ensure_deepspeed_comm()
    try:
        check_grid_agrees(PipelineParallelGrid(topology=pipeline_topology(world, 1, 1)))
        errors.append(None)
    except RuntimeError as e:
        errors.append(str(e))
    state.destroy()
    return errors


def engine_tp_worker(rank, world, tp, cfg_dict, weights, ids, labels):
    """One rank of a TP x DP run through DeepSpeed's plain engine with MegatronMPU (ZeRO-1, fp32, SGD, no
    clipping). Returns on rank 0: (loss, full weights after the step, the DP size DeepSpeed saw)."""
    import deepspeed
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from statex_dist.models import build_model, specs_for
    from statex_dist.parallel import state
    from statex_dist.parallel.deepspeed_mpu import MegatronMPU, ensure_deepspeed_comm
    from statex_dist.parallel.weights import gather_full, load_full
    state.initialize(tp, 1)
    ensure_deepspeed_comm()
    cfg = config_from_dict(cfg_dict)
    specs = specs_for(cfg, tp)
    model = build_model(cfg, init=False)
    load_full(model, weights, specs)
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    n = ids.shape[0] // dp
    ds_config = {"train_batch_size": ids.shape[0], "train_micro_batch_size_per_gpu": n,
                 "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 1},
                 "zero_allow_untested_optimizer": True, "gradient_clipping": 0.0, "steps_per_print": 10 ** 9}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR),
                                      config=ds_config, mpu=MegatronMPU())
    loss = engine(ids[dp_rank * n:(dp_rank + 1) * n], labels=labels[dp_rank * n:(dp_rank + 1) * n])
    engine.backward(loss)
    engine.step()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss, group=ps.get_data_parallel_group())
    new = gather_full(model, specs)
    keep, seen_dp = rank == 0, engine.dp_world_size
    state.destroy()
    return (mean_loss.item() / dp, new, seen_dp) if keep else None


def trim_padding(full, ref):
    # rows past the single-process vocab are TP padding: they must stay zero and are then dropped
    out = {}
    for n, t in full.items():
        if t.shape[0] > ref[n].shape[0]:
            assert t[ref[n].shape[0]:].abs().max() == 0, f"{n}: padded vocab rows are not zero"
            t = t[:ref[n].shape[0]]
        out[n] = t
    return out
