"""GLA and Mamba2 language models built from megatron-core's tensor-parallel layers."""
from statex_dist.models.gla import GLAForCausalLM
from statex_dist.models.mamba2 import Mamba2ForCausalLM


def build_model(config, dtype=None, init: bool = True):
    """The model class for ``config.arch`` on this process's TP rank (debug mode: a world of one)."""
    import torch

    from statex_dist.parallel import state
    from statex_dist.parallel.validate import check_parallel_sizes
    state.ensure_initialized()
    check_parallel_sizes(config, state.tp_size())
    cls = {"gla": GLAForCausalLM, "mamba2": Mamba2ForCausalLM}[config.arch]
    return cls(config, dtype=dtype or torch.float32, init=init)


def specs_for(config, tp: int = 1):
    """Every parameter's ShardSpec for ``config`` at this TP size (see statex_dist.parallel.sharding)."""
    from statex_dist.models import gla, mamba2
    return {"gla": gla.param_specs, "mamba2": mamba2.param_specs}[config.arch](config, tp)


__all__ = ["GLAForCausalLM", "Mamba2ForCausalLM", "build_model", "specs_for"]
