"""The training job's pieces: initial weights, optimizer and schedule, DeepSpeed set-up, checkpoints, logs."""
