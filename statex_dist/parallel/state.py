"""Process groups: megatron-core's ``parallel_state`` over torch.distributed, set up in one place.

The training entry point calls :func:`initialize` with the run's sizes; debug mode (a single process,
``load_model``, the tests) gets a world of one from :func:`ensure_initialized` without any launcher.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.model_parallel_config import ModelParallelConfig

from statex_dist.parallel import device


def _init_world() -> None:
    if dist.is_initialized():
        return
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend=device.current().backend)
    else:
        # Debug mode: a world of one needs no rendezvous, so use an in-memory store (no port to pick).
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)


def initialize(tensor_parallel: int = 1, pipeline_parallel: int = 1, context_parallel: int = 1) -> None:
    """Create the TP / CP / DP / PP groups (megatron-core's default order: TP innermost, then CP, then DP, then
    PP); CP: statex_dist.parallel.context."""
    _init_world()
    world = dist.get_world_size()
    sizes = (tensor_parallel, pipeline_parallel, context_parallel)
    if world % (tensor_parallel * pipeline_parallel * context_parallel):
        raise ValueError(
            f"world size {world} is not a multiple of tensor_parallel x pipeline_parallel x context_parallel = "
            f"{' x '.join(map(str, sizes))}; pick sizes whose product divides {world}"
        )
    if ps.model_parallel_is_initialized():
        have = (ps.get_tensor_model_parallel_world_size(), ps.get_pipeline_model_parallel_world_size(),
                ps.get_context_parallel_world_size())
        if have != sizes:
            raise RuntimeError("process groups already exist with TP={} PP={} CP={}; call "
                               "statex_dist.parallel.state.destroy() first".format(*have))
        return
    ps.initialize_model_parallel(
        tensor_model_parallel_size=tensor_parallel,
        pipeline_model_parallel_size=pipeline_parallel,
        context_parallel_size=context_parallel,
    )


def ensure_initialized() -> None:
    """Groups of the running job if any, else a world of one (debug mode)."""
    if not ps.model_parallel_is_initialized():
        initialize(1, 1)


def destroy() -> None:
    if ps.model_parallel_is_initialized():
        ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def collective_device(group=None) -> torch.device:
    """The device a collective's tensors must live on: the current CUDA device when ``group`` runs on NCCL
    (NCCL refuses CPU tensors), the CPU under gloo. Every tensor the package builds for a collective (as
    opposed to a model tensor, already where the model is) is made on this device."""
    if "nccl" in str(dist.get_backend(group)):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def tp_rank() -> int:
    return ps.get_tensor_model_parallel_rank()


def tp_size() -> int:
    return ps.get_tensor_model_parallel_world_size()


def tp_group():
    return ps.get_tensor_model_parallel_group()


def megatron_config(params_dtype: torch.dtype = torch.float32) -> ModelParallelConfig:
    """The ModelParallelConfig every megatron-core layer of the models is built with.

    megatron-core's layers draw no weights (``perform_initialization=False``): statex_dist.models.init draws
    each full tensor from its own seed and loads this rank's slice, so every TP x PP layout holds the same
    model. ``use_cpu_initialization`` keeps megatron-core from allocating on a GPU the first time.
    """
    return ModelParallelConfig(
        tensor_model_parallel_size=tp_size(),
        pipeline_model_parallel_size=ps.get_pipeline_model_parallel_world_size(),
        params_dtype=params_dtype,
        pipeline_dtype=params_dtype,  # megatron-core demands it once PP > 1
        use_cpu_initialization=True,
        perform_initialization=False,
    )
