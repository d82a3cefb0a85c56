"""The model configurations moved to ``statex_dist.models.config`` and each architecture's folder
(``statex_dist.archs.<name>.config``; the run configuration, the training YAML, is ``statex_dist.run_config``);
importable from here as before."""
from statex_dist import archs
from statex_dist.models.config import ModelConfig, config_from_dict


def __getattr__(name):
    """Each architecture's config class by its name (``GLAConfig``, ``Mamba2Config``)."""
    for arch in archs.ARCHS.values():
        if arch.config_class.__name__ == name:
            return arch.config_class
    raise AttributeError(name)


__all__ = ["ModelConfig", "config_from_dict"]
