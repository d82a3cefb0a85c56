"""Errors of the data side. Each message names the file at fault and what to do about it.

All are ``ValueError``s (``MissingDataError`` is also a ``FileNotFoundError``), so the training entry point
reports them as configuration errors; each takes a single message argument, which lets a DataLoader worker
re-raise it in the main process with its type intact.
"""


class DataError(ValueError):
    """A corpus, manifest or loader setting that cannot work."""


class MissingDataError(DataError, FileNotFoundError):
    """A shard folder, manifest or shard file that is not there."""


class ShardError(DataError):
    """One shard file is empty, truncated or corrupt; the message names it."""
