"""The one exception type for bad checkpoints: its message names the file, the tensor and the fix."""


class CheckpointError(ValueError):
    pass
