"""The DeepSpeed engine of a run: its config block, the model (one module or a pipeline), the mpu."""
from __future__ import annotations

import torch
import torch.distributed as dist


def dtype_of(run_cfg, device) -> torch.dtype:
    """``model.dtype``; ``auto`` is the device's default (bf16 on GPUs, fp32 on the CPU)."""
    d = run_cfg.model.dtype
    if d == "auto":
        return device.default_dtype
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[d]


def deepspeed_config(run_cfg, dp: int, dtype: torch.dtype) -> dict:
    """DeepSpeed's config block for this run.

    bf16: parameters, activations and the gradients of one backward are bf16; the optimizer keeps fp32
    master weights and fp32 moments, and ``grad_accum_dtype: fp32`` sums the micro-batches' gradients in
    fp32 buffers: at ZeRO-1 (the default, and the only stage a pipeline allows) through DeepSpeed's
    BF16_Optimizer, at ZeRO-2/3 in the ZeRO optimizer's separate accumulation buffers. ZeRO-0 (DeepSpeed's
    DDP bf16 path) accumulates in bf16: DeepSpeed refuses fp32 accumulation without ZeRO.
    """
    d, p = run_cfg.data, run_cfg.parallel   # checked by run_config.validate for this DP
    per_step = d.micro_batch * dp
    bf16 = dtype == torch.bfloat16
    extra = {"data_types": {"grad_accum_dtype": "fp32"}} if bf16 and p.zero_stage >= 1 else {}
    return {
        **extra,
        # DeepSpeed's data-parallel group spans DP x CP (parallel/deepspeed_mpu.py): it counts a CP segment as
        # a sample, so its batch is the global batch times CP
        "train_batch_size": d.global_batch * p.cp,
        "train_micro_batch_size_per_gpu": d.micro_batch,
        "gradient_accumulation_steps": d.global_batch // per_step,
        "gradient_clipping": run_cfg.optimizer.grad_clip,
        "zero_optimization": {"stage": p.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def initialize_engine(model, optimizer, scheduler, ds_config: dict, pipeline: bool):
    import deepspeed

    from statex_dist.parallel.deepspeed_mpu import MegatronMPU
    kwargs = dict(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
    if not pipeline:  # a PipelineModule carries its own topology (built to agree with megatron-core's groups)
        kwargs["mpu"] = MegatronMPU()
    engine, _, _, _ = deepspeed.initialize(**kwargs)
    share_fp32_master(engine)
    return engine


def share_fp32_master(engine) -> bool:
    """Make ZeRO-1/2's fp32 master partition of an fp32 model the weights' own partition.

    DeepSpeed's ZeRO optimizer clones the rank's partition of the flat weights into an fp32 master, steps the
    master and copies it back: for weights that are fp32 already the clone holds the same numbers, 4 bytes a
    parameter (over DP), and no DeepSpeed option leaves it out. Pointing the master at the weights' partition
    (and relinking the per-parameter fragments the tensor-fragment API reads) makes the step update the
    weights in place; the copy back becomes a copy onto itself and the DP all-gather is unchanged. ZeRO-0
    steps the weights directly; ZeRO-3 and bf16 are left as DeepSpeed makes them. Returns whether it applied.
    """
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
    opt = engine.optimizer
    if (not isinstance(opt, DeepSpeedZeroOptimizer) or opt.cpu_offload
            or any(flat.dtype != torch.float32 for flat in opt.bit16_groups_flat)):
        return False
    for i, master in enumerate(opt.single_partition_of_fp32_groups):
        own = opt.parallel_partitioned_bit16_groups[i][dist.get_rank(group=opt.real_dp_process_group[i])]
        assert own.shape == master.shape and torch.equal(own, master), "the fp32 master is not the weights"
        master.data = own.data
    opt._link_all_hp_params()   # the fragments were views of the clones
    opt._hp_optimizer_states_linked = False
    return True
