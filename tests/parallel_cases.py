"""Shared pieces of the multi-process tests: small model configs, reference weights, one SGD step, and the
comparison of every rank's copies with one process."""
from __future__ import annotations

import torch

from statex_dist.archs.gdn.config import GDNConfig
from statex_dist.archs.gla.config import GLAConfig
from statex_dist.archs.mamba2.config import Mamba2Config
from statex_dist.models.config import config_from_dict

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
    # Gated DeltaNet, 4 key heads with 8 value heads (grouped), a merged 1-head layer, 2 heads with 4 value
    # heads: head-sharded (layers 0, 2) and value-sharded (1, 3) at TP=2; at TP=4 only layer 0 by heads
    "gdn-mixed": GDNConfig(vocab_size=101, hidden_size=64, num_layers=4, num_heads=[4, 1, 2, 1],
                           num_v_heads=[8, 1, 4, 1], key_dim=64, value_dim=64, use_short_conv=True, use_gate=True,
                           tie_word_embeddings=False),
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


def single_process(cfg, weights, ids, labels, logits: bool = False):
    """Loss, full gradients and SGD-updated weights of the one-process model; with ``logits`` also its
    logits [B, T, V_pad] (the output layer's, padded columns included: zero weights give zero logits)."""
    from statex_dist.models import build_model, specs_for
    from statex_dist.parallel.weights import load_full
    model = build_model(cfg, init=False)
    load_full(model, weights, specs_for(cfg, 1))
    captured = []
    model.lm_head.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    loss = model(ids, labels=labels)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    new = {n: (p - LR * p.grad).detach() for n, p in model.named_parameters()}
    return (loss.item(), grads, new, captured[0]) if logits else (loss.item(), grads, new)


def prepared(names, logits: bool = False, T: int = 19) -> tuple[dict, dict]:
    """For each case of ``names``: ({name: (one-process reference, labels)}, {name: (config dict, weights,
    ids, labels)}), the second the arguments a worker runs it with."""
    refs, args = {}, {}
    for name in names:
        cfg = CASES[name]
        weights = reference_weights(cfg)
        ids, labels = batch(cfg, T=T)
        refs[name] = single_process(cfg, weights, ids, labels, logits=logits), labels
        args[name] = (cfg.to_dict(), weights, ids, labels)
    return refs, args


def cases_worker(rank, world, tp, cp, cases: dict):
    """tp_dp_step for each case (name -> its arguments) on the same TP x CP x DP groups (one spawn for all)."""
    from statex_dist.parallel import state
    state.initialize(tp, 1, cp)
    try:
        return {name: tp_dp_step(tp, *args) for name, args in cases.items()}
    finally:
        state.destroy()


def tp_dp_worker(rank, world, tp, cfg_dict, weights, ids, labels, sequence_parallel=False):
    """One rank of a TP x DP run without a pipeline: this rank's own copies (tp_dp_step), on every rank."""
    from statex_dist.parallel import state
    state.initialize(tp, 1)
    out = tp_dp_step(tp, cfg_dict, weights, ids, labels, sequence_parallel)
    state.destroy()
    return out


def tp_dp_step(tp, cfg_dict, weights, ids, labels, sequence_parallel=False):
    """tp_dp_worker's work on groups that already exist: one forward and backward of this rank's rows of the
    batch (its DP slice), gradients averaged over DP, one SGD step. Returns what this rank holds, nothing
    gathered: its place (rank, tp_rank, tp, the rows it read), the DP-mean loss, the loss of its own rows,
    the output layer's logits it computed (its vocabulary slice [n, T, V_pad / TP]), and its shards of every
    gradient and of every weight after the step (under the model's names)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from statex_dist.models import build_model, specs_for
    from statex_dist.parallel import context
    from statex_dist.parallel.weights import load_full
    cfg = config_from_dict(cfg_dict)
    specs = specs_for(cfg, tp)
    model = build_model(cfg, init=False, sequence_parallel=sequence_parallel)
    load_full(model, weights, specs)
    captured = []
    model.lm_head.register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    n = ids.shape[0] // dp
    rows = (dp_rank * n, (dp_rank + 1) * n)
    cp, T = context.size(), ids.shape[1]
    tokens = (context.rank() * T // cp, (context.rank() + 1) * T // cp)   # this rank's CP segment
    loss = model(context.segment(ids[rows[0]:rows[1]]), labels=context.segment(labels[rows[0]:rows[1]]))
    loss.backward()
    dpg, dp = ps.get_data_parallel_group(with_context_parallel=True), dp * cp   # the mean over DP x CP
    for p in model.parameters():
        dist.all_reduce(p.grad, group=dpg)
        p.grad /= dp
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss, group=dpg)
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p -= LR * p.grad
    new = {name: p.detach().clone() for name, p in model.named_parameters()}
    return {"rank": dist.get_rank(), "tp_rank": ps.get_tensor_model_parallel_rank(), "tp": tp, "rows": rows,
            "tokens": tokens,
            "loss": mean_loss.item() / dp, "own_loss": loss.item(), "logits": captured[0], "grads": grads,
            "new": new}


def compare_ranks(cfg, ref, labels, results, tol: float) -> dict:
    """Every rank's own copies (tp_dp_step's results, one per rank) against the one-process reference ``ref``
    (single_process(..., logits=True)), relative error at most ``tol``: the DP-mean loss; the loss of the
    rank's own rows (cross entropy of the reference's logits on those rows); its logits against the same
    vocabulary slice of the reference's rows; its shard of every gradient and of every weight after the step
    against the same slice of the full tensor (ShardSpec.shard). A slice's error is max |a - b| over the
    slice divided by max |b| over the whole reference tensor: the measure of a gathered comparison, which a
    shard holding only small entries (a few heads' dt_bias at TP=4) does not inflate. Rows past the
    one-process tensor (TP vocabulary padding) must be exactly zero, and copies of one slice on several
    ranks (DP replicas, TP-replicated tensors) bitwise equal. Fails with every disagreement listed by rank;
    returns the largest error measured of each kind (loss, own-rows-loss, logits, grads, new) and where."""
    import torch.nn.functional as F

    from statex_dist.models import specs_for
    loss, grads, new, logits = ref
    tp = results[0]["tp"]
    specs = specs_for(cfg, tp)
    bad, worst, copies = [], {}, {}

    def slice_err(got, want, whole):
        if got.shape != want.shape:
            return float("inf")
        return ((got.double() - want.double()).abs().max() / whole.double().abs().max().clamp_min(1e-30)).item()

    def check(rank, what, err):
        kind = what.split(" ")[0]
        if err >= worst.get(kind, (0.0,))[0]:
            worst[kind] = (err, f"{what}, rank {rank}")
        if not err <= tol:
            bad.append(f"rank {rank}: {what} {err:.1e}")

    assert sorted(r["rank"] for r in results) == list(range(len(results)))
    for r in results:
        rank, (a, b), tp_rank = r["rank"], r["rows"], r["tp_rank"]
        t0, t1 = r.get("tokens", (0, logits.shape[1]))   # a CP rank's segment of the sequence
        check(rank, "loss", abs(r["loss"] - loss) / abs(loss))
        own = F.cross_entropy(logits[a:b, t0:t1, :cfg.vocab_size].double().flatten(0, 1),
                              labels[a:b, t0:t1].flatten()).item()
        check(rank, "own-rows-loss", abs(r["own_loss"] - own) / abs(own))
        local = r["logits"]
        full = F.pad(logits[a:b, t0:t1], (0, local.shape[-1] * tp - logits.shape[-1]))
        want = full.chunk(tp, dim=-1)[tp_rank]
        check(rank, "logits", slice_err(local, want, logits))
        for kind, ref_t in (("grads", grads), ("new", new)):
            if set(r[kind]) != set(ref_t):
                bad.append(f"rank {rank}: {kind} names differ: {sorted(set(r[kind]) ^ set(ref_t))}")
                continue
            for name, t in r[kind].items():
                spec = specs[name]
                want = spec.shard(spec.pad_rows(ref_t[name]), tp_rank, tp, name)
                if t.shape != want.shape:
                    bad.append(f"rank {rank}: {kind} {name} shape {list(t.shape)}, want {list(want.shape)}")
                    continue
                check(rank, f"{kind} {name}", slice_err(t, want, ref_t[name]))
                padding = spec.shard(1 - spec.pad_rows(torch.ones_like(ref_t[name])), tp_rank, tp, name).bool()
                if (t[padding] != 0).any():
                    bad.append(f"rank {rank}: {kind} {name}: padded vocabulary rows are not zero")
                key = (kind, name, tp_rank if spec.dim is not None else None)
                first = copies.setdefault(key, (rank, t))
                if not torch.equal(t, first[1]):
                    bad.append(f"rank {rank}: {kind} {name} differs from rank {first[0]}'s copy")
    assert not bad, f"{len(bad)} disagreements with one process (tol {tol:.0e}):\n" + "\n".join(bad)
    return worst


def pipeline_cases_worker(rank, world, tp, pp, cases: dict):
    """pipeline_worker for each case (name -> its arguments after ``pp``) in the same processes."""
    from statex_dist.parallel import state
    try:
        return {name: pipeline_worker(rank, world, tp, pp, *args, destroy=False) for name, args in cases.items()}
    finally:
        state.destroy()


def pipeline_worker(rank, world, tp, pp, cfg_dict, weights, ids, labels, micro_batch, grad_accum, clip=0.0,
                    ckpt_interval=0, destroy=True):
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
    if destroy:
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
