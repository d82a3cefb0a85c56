"""The language models of every architecture (statex_dist.archs), built from megatron-core's tensor-parallel
layers.

The model classes import megatron-core; the layouts (``specs_for``) do not, so checkpoint tools that only
move tensors start without it.
"""
from statex_dist import archs
from statex_dist.models.layout import specs_for
from statex_dist.models.validate import check_parallel_sizes


def build_model(config, dtype=None, init: bool = True, sequence_parallel: bool = False, seed: int = 0):
    """The model class of ``config.arch`` on this process's TP rank (debug mode: a world of one).

    ``init``: this rank's shards of the weights statex_dist.models.init draws for ``seed`` (the same full model
    at every TP layout); else uninitialised, to be loaded.

    ``sequence_parallel``: Megatron-style sequence parallelism along T over the TP group (no-op at TP = 1).
    """
    import torch

    from statex_dist.parallel import state
    state.ensure_initialized()
    check_parallel_sizes(config, state.tp_size())
    cls = archs.of(config).model_class
    return cls(config, dtype=dtype or torch.float32, init=init, sequence_parallel=sequence_parallel, seed=seed)


def __getattr__(name):
    """Each architecture's model class by its name (``GLAForCausalLM``), imported on first use."""
    for arch in archs.ARCHS.values():
        if arch.model.rpartition(":")[2] == name:
            return arch.model_class
    raise AttributeError(name)


__all__ = ["build_model", "specs_for"]
