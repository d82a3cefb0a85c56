"""Checkpoint formats: Hugging Face folders (fla GLA, mamba_ssm and transformers Mamba2)."""
from statex_dist.checkpoint.errors import CheckpointError
from statex_dist.checkpoint.hf_load import detect_format, load_hf_into, read_hf_config

__all__ = ["CheckpointError", "detect_format", "load_hf_into", "read_hf_config"]
