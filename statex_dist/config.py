"""The model configurations moved to ``statex_dist.models.config`` (the run configuration, the training YAML,
is ``statex_dist.run_config``); importable from here as before."""
from statex_dist.models.config import GLAConfig, Mamba2Config, ModelConfig, config_from_dict

__all__ = ["GLAConfig", "Mamba2Config", "ModelConfig", "config_from_dict"]
