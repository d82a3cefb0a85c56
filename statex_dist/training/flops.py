"""Model FLOPs per token, from the model config alone: the figure behind TFLOP/s and MFU.

The whole model is counted, whatever the TP x PP layout (a rank's shard would count it TP x PP times too
little), and one step's FLOPs are shared by every GPU of the job. A multiply-add is 2 FLOPs.

Counted per token, forward (each architecture counts its blocks: ``layer_flops`` in
statex_dist/archs/<name>/flops.py):
- every matmul: 2 x (weights of the projections, the low-rank gate and the LM head over the real vocab);
  the embedding is a lookup (0);
- the depthwise short convolutions: 2 x width x channels;
- the recurrence in its recurrent form, 4 x (state floats) per layer: a rank-1 update of the state
  (k^T v, dt x^T B) and its read-out (q S, S C), each a multiply-add per state float. The chunked kernels
  do more arithmetic than this (the intra-chunk products); that is their cost, not the model's.
Left out: norms, activations, gates, the decay's multiplies and the loss (O(D) per token).

Training counts 3 x forward (backward = 2 x forward), the usual model-FLOPs convention: activation
checkpointing's recompute is not counted, and frozen weights are counted as if trained.
"""
from __future__ import annotations

from statex_dist import archs
from statex_dist.models.config import ModelConfig


def forward_flops_per_token(config: ModelConfig) -> int:
    """Forward FLOPs of the whole model for one token (see the module docstring for what counts)."""
    layer = archs.of(config).layer_flops
    return sum(layer(config, i) for i in range(config.num_layers)) + 2 * config.hidden_size * config.vocab_size


def train_flops_per_token(config: ModelConfig) -> int:
    """Forward + backward FLOPs for one trained token: 3 x forward."""
    return 3 * forward_flops_per_token(config)
