"""GLA and Mamba2 language models built from megatron-core's tensor-parallel layers.

The model classes import megatron-core; the layouts (``specs_for``) do not, so checkpoint tools that only
move tensors start without it.
"""


def build_model(config, dtype=None, init: bool = True, sequence_parallel: bool = False, seed: int = 0):
    """The model class for ``config.arch`` on this process's TP rank (debug mode: a world of one).

    ``init``: this rank's shards of the weights statex_dist.models.init draws for ``seed`` (the same full model
    at every TP layout); else uninitialised, to be loaded.

    ``sequence_parallel``: Megatron-style sequence parallelism along T over the TP group (no-op at TP = 1).
    """
    import torch

    from statex_dist.parallel import state
    from statex_dist.parallel.validate import check_parallel_sizes
    state.ensure_initialized()
    check_parallel_sizes(config, state.tp_size())
    if config.arch == "gla":
        from statex_dist.models.gla import GLAForCausalLM as cls
    else:
        from statex_dist.models.mamba2 import Mamba2ForCausalLM as cls
    return cls(config, dtype=dtype or torch.float32, init=init, sequence_parallel=sequence_parallel, seed=seed)


def specs_for(config, tp: int = 1):
    """Every parameter's ShardSpec for ``config`` at this TP size (see statex_dist.parallel.sharding)."""
    if config.arch == "gla":
        from statex_dist.models.gla_layout import param_specs
    else:
        from statex_dist.models.mamba2_layout import param_specs
    return param_specs(config, tp)


def __getattr__(name):
    if name == "GLAForCausalLM":
        from statex_dist.models.gla import GLAForCausalLM
        return GLAForCausalLM
    if name == "Mamba2ForCausalLM":
        from statex_dist.models.mamba2 import Mamba2ForCausalLM
        return Mamba2ForCausalLM
    raise AttributeError(name)


__all__ = ["GLAForCausalLM", "Mamba2ForCausalLM", "build_model", "specs_for"]
