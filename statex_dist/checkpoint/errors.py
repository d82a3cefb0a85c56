"""The one exception type for bad checkpoints: its message names the file, the tensor and the fix."""


class CheckpointError(ValueError):
    pass


class MissingCheckpointError(CheckpointError, FileNotFoundError):
    """A checkpoint path that is not there (also a FileNotFoundError, as Python callers expect)."""
