"""Checkpoint formats: Hugging Face folders (each architecture's, statex_dist.archs), the sharded layout-free
folder (``sharded``) and the atomic writes every writer uses (``atomic``).

The Hugging Face readers load on first use: the shard writer (statex_dist.data), which writes through
``atomic``, then starts without importing torch."""
from statex_dist.checkpoint.errors import CheckpointError

__all__ = ["CheckpointError", "detect_format", "load_hf_into", "read_hf_config"]


def __getattr__(name: str):
    if name in ("detect_format", "load_hf_into", "read_hf_config"):
        from statex_dist.checkpoint import hf_load
        return getattr(hf_load, name)
    raise AttributeError(f"module 'statex_dist.checkpoint' has no attribute {name!r}")
