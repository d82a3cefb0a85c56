"""Training data: text -> token shards (``writer``, ``tools/make_shards.py``) -> DP-split, resumable
micro-batches (``pipeline``). ``format.py`` describes the shard folder.

The loader's names load on first use: the shard writer (and each of its processes) then starts without
importing torch."""
from statex_dist.data.errors import DataError, MissingDataError, ShardError

__all__ = ["DataError", "MissingDataError", "ShardError", "Manifest", "check_shards", "ShardLoader",
           "build_loader"]


def __getattr__(name: str):
    if name in ("Manifest", "check_shards"):
        from statex_dist.data import format as module
    elif name in ("ShardLoader", "build_loader"):
        from statex_dist.data import pipeline as module
    else:
        raise AttributeError(f"module 'statex_dist.data' has no attribute {name!r}")
    return getattr(module, name)
