"""Training data: text -> token shards (``writer``, ``tools/make_shards.py``) -> DP-split, resumable
micro-batches (``pipeline``). ``format.py`` describes the shard folder."""
from statex_dist.data.errors import DataError, MissingDataError, ShardError
from statex_dist.data.format import Manifest, check_shards
from statex_dist.data.pipeline import ShardLoader, build_loader

__all__ = ["DataError", "MissingDataError", "ShardError", "Manifest", "check_shards", "ShardLoader",
           "build_loader"]
