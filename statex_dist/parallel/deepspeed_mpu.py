"""DeepSpeed's view of the process groups, taken from megatron-core's ``parallel_state``.

DeepSpeed reads the groups from an ``mpu`` object. Without one it treats every rank as a data-parallel
rank, so ZeRO would shard (and average) over tensor-parallel ranks too: silently wrong.

- No pipeline: pass ``mpu=MegatronMPU()`` to ``deepspeed.initialize``.
- A ``PipelineModule``: DeepSpeed refuses an ``mpu`` and uses the module's grid, built from
  :func:`pipeline_topology`. It has to stay that way: the pipeline engine runs one collective (the loss
  broadcast of ``train_batch``) on ``engine.mpu``'s pipe group on the last stage and on ``engine.grid``'s
  on the others, so an mpu with its own group objects deadlocks there. The grid must then hold the same
  ranks in each group as megatron-core, which :func:`check_grid_agrees` asserts on every rank.

DeepSpeed's words: "model parallel" = every rank holding another part of one replica (TP x PP),
"slice parallel" = tensor parallel, "pipe parallel" = pipeline parallel.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from statex_dist.parallel.state import collective_device


class MegatronMPU:
    """The ``mpu`` of a DeepSpeed engine without a pipeline, answering from megatron-core's groups, so
    ZeRO shards and averages over the DP group only. Method names: DeepSpeed's and Megatron's."""

    # tensor parallel (DeepSpeed's "slice parallel")
    def get_tensor_model_parallel_rank(self) -> int:
        return ps.get_tensor_model_parallel_rank()

    def get_tensor_model_parallel_world_size(self) -> int:
        return ps.get_tensor_model_parallel_world_size()

    def get_tensor_model_parallel_group(self):
        return ps.get_tensor_model_parallel_group()

    def get_tensor_model_parallel_src_rank(self) -> int:
        return ps.get_tensor_model_parallel_src_rank()

    get_slice_parallel_rank = get_tensor_model_parallel_rank
    get_slice_parallel_world_size = get_tensor_model_parallel_world_size
    get_slice_parallel_group = get_tensor_model_parallel_group

    # model parallel = TP x PP (gradient norms are summed over it; equals TP when PP = 1)
    def get_model_parallel_rank(self) -> int:
        return dist.get_rank(ps.get_model_parallel_group())

    def get_model_parallel_world_size(self) -> int:
        return dist.get_world_size(ps.get_model_parallel_group())

    def get_model_parallel_group(self):
        return ps.get_model_parallel_group()

    # data parallel: what ZeRO partitions over and averages gradients over. With context parallelism that is
    # DP x CP (each CP rank's gradient covers its segment's tokens: the mean over both is the mean over all
    # tokens), and DeepSpeed counts a segment as a sample (training/ds_setup.py)
    def get_data_parallel_rank(self) -> int:
        return ps.get_data_parallel_rank(with_context_parallel=True)

    def get_data_parallel_world_size(self) -> int:
        return ps.get_data_parallel_world_size(with_context_parallel=True)

    def get_data_parallel_group(self):
        return ps.get_data_parallel_group(with_context_parallel=True)

    def get_data_parallel_group_ranks(self) -> list[int]:
        return dist.get_process_group_ranks(self.get_data_parallel_group())

    # pipeline parallel
    def get_pipeline_model_parallel_rank(self) -> int:
        return ps.get_pipeline_model_parallel_rank()

    def get_pipeline_model_parallel_world_size(self) -> int:
        return ps.get_pipeline_model_parallel_world_size()

    def get_pipeline_model_parallel_group(self):
        return ps.get_pipeline_model_parallel_group()

    get_pipe_parallel_rank = get_pipeline_model_parallel_rank
    get_pipe_parallel_world_size = get_pipeline_model_parallel_world_size
    get_pipe_parallel_group = get_pipeline_model_parallel_group


def pipeline_topology(tp: int, pp: int, dp: int):
    """DeepSpeed's topology for PP x DP x TP ranks: axes ['pipe', 'data', 'model'], TP innermost.

    That is megatron-core's default order (TP, then DP, then PP), so rank r has the same coordinates in
    both when parallel_state was initialised with the same TP and PP sizes.
    """
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology
    return PipeModelDataParallelTopology(num_pp=pp, num_mp=tp, num_dp=dp)


def ensure_deepspeed_comm() -> None:
    """Let ``deepspeed.comm`` wrap the torch.distributed world already set up by ``state.initialize``."""
    import deepspeed
    from deepspeed import comm
    if not comm.is_initialized():
        deepspeed.init_distributed(dist_backend=dist.get_backend(), auto_mpi_discovery=False)
        _unlink_shm_buffer()


def _unlink_shm_buffer() -> None:
    """Remove this rank's /dev/shm file of DeepSpeed's CPU all-reduce once every rank has mapped it.

    With the CPU accelerator and all ranks on one machine (the launcher's LOCAL_SIZE equals the world),
    ``init_distributed`` maps one 64 MiB file per rank, /dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_
    <rank> (deepspeed/ops/csrc/cpu/comm/shm.cpp), opens every peer's, and never unlinks them: each multi-process
    CPU run would leave ranks x 64 MiB of RAM behind in /dev/shm until the machine runs out. Every rank has
    opened its peers' files when ``init_distributed`` returns; after a barrier each rank unlinks its own, and
    the mappings stay valid until the process exits.
    """
    world = dist.get_world_size()
    if world == 1 or os.environ.get("LOCAL_SIZE") != str(world):   # the condition under which DeepSpeed maps
        return
    env = os.environ.get
    own = Path("/dev/shm") / (f"deepspeed_allreduce_buffer_{os.getuid()}_{env('MASTER_ADDR', '')}_"
                              f"{env('MASTER_PORT', '')}_{dist.get_rank()}")
    dist.barrier()
    own.unlink(missing_ok=True)


def _grid_view(grid) -> dict[str, tuple]:
    """(rank within, world size, member ranks) of each group of DeepSpeed's PipelineParallelGrid."""
    me = dist.get_rank()
    return {
        "TP": (grid.get_slice_parallel_rank(), grid.get_slice_parallel_world_size(), sorted(grid.slice_group)),
        "DP": (grid.get_data_parallel_rank(), grid.get_data_parallel_world_size(), sorted(grid.dp_group)),
        "PP": (grid.get_stage_id(), grid.get_pipe_parallel_world_size(), sorted(grid.pp_group)),
        "model": (grid.get_model_parallel_rank(), grid.get_model_parallel_world_size(),
                  sorted(grid._topo.filter_match(data=grid._topo.get_coord(me).data))),
    }


def _megatron_view() -> dict[str, tuple]:
    def ranks(group):
        return sorted(dist.get_process_group_ranks(group))
    mpu = MegatronMPU()
    return {
        "TP": (mpu.get_tensor_model_parallel_rank(), mpu.get_tensor_model_parallel_world_size(),
               ranks(mpu.get_tensor_model_parallel_group())),
        "DP": (mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size(),
               ranks(mpu.get_data_parallel_group())),
        "PP": (mpu.get_pipeline_model_parallel_rank(), mpu.get_pipeline_model_parallel_world_size(),
               ranks(mpu.get_pipeline_model_parallel_group())),
        "model": (mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size(),
                  ranks(mpu.get_model_parallel_group())),
    }


def check_grid_agrees(grid) -> None:
    """Fail on every rank, before any training collective, if DeepSpeed's grid and megatron-core's groups
    differ anywhere (rank within a group, group size or members, for TP, DP, PP and model parallel).

    The verdict is all-reduced, so a rank whose own coordinates happen to agree does not go on to wait
    in a collective its peers never join.
    """
    ds, mc = _grid_view(grid), _megatron_view()
    diff = [f"{k}: DeepSpeed (rank {ds[k][0]} of {ds[k][1]}, ranks {ds[k][2]}) vs megatron-core "
            f"(rank {mc[k][0]} of {mc[k][1]}, ranks {mc[k][2]})" for k in ds if ds[k] != mc[k]]
    bad = torch.tensor([1 if diff else 0], device=collective_device())
    dist.all_reduce(bad, op=dist.ReduceOp.MAX)
    if bad.item():
        mine = "; ".join(diff) if diff else "this rank agrees, another does not"
        raise RuntimeError(
            f"rank {dist.get_rank()}: DeepSpeed's pipeline topology and megatron-core's process groups "
            f"disagree ({mine}). Build the topology with pipeline_topology(tp, pp, dp) and initialise "
            f"parallel_state with the same TP and PP sizes and its default order.")
